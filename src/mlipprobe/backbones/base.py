"""The one interface every backbone (MACE, PET, ...) implements.

A backbone turns ``ase.Atoms`` into its own graph objects, batches them, and maps a batch
to energies, forces, stress, the outputs of any heads added for new targets, and per-atom
features. Training, strategies and embedding writers only talk to this interface; nothing
outside ``mlipprobe.backbones`` imports mace or metatrain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

FEATURE_KINDS = ("backbone", "last_layer")
PARAMETER_GROUPS = ("backbone", "heads", "new_heads", "lora")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, is of an unknown kind, or does not fit the data."""


class UntrustedCheckpointError(CheckpointError):
    """Loading this checkpoint would run code stored in the file; the user must opt in."""


def check_lora_settings(rank, alpha) -> None:
    """Raise ``ValueError`` unless ``rank`` is a positive integer and ``alpha`` a positive number."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r} (strategy.lora_rank)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) or not alpha > 0:
        raise ValueError(f"LoRA alpha must be a positive number, got {alpha!r} (strategy.lora_alpha)")


@dataclass(frozen=True)
class HeadSpec:
    """A head added to a pretrained model for a new target.

    ``dim`` outputs per atom; ``vector=True`` asks for an equivariant (L=1) output of three
    components per atom (a dipole-like target), otherwise the outputs are invariant.
    """

    name: str
    dim: int = 1
    vector: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "dim": self.dim, "vector": self.vector}


@dataclass
class BackboneOutput:
    """What a backbone returns for one batch.

    Shapes: ``energy`` (n_structures,), ``forces`` (n_atoms, 3), ``stress``
    (n_structures, 3, 3), ``heads[name]`` (n_atoms, dim) per-atom outputs of added heads,
    ``features[kind]`` (n_atoms, d).
    """

    energy: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class Backbone(nn.Module):
    """Base class of all backbones.

    Subclasses implement ``atoms_to_graph``, ``collate_graphs``, ``forward``,
    ``parameter_groups``, ``add_head``, ``reset_parameters`` and ``save``; the base class
    supplies batching, element checks and ``embed``. ``add_lora``/``merge_lora`` are
    optional (strategy ``lora``).

    Attributes
    ----------
    kind : str
        ``"mace"`` or ``"pet"``; stored in every checkpoint and embedding file.
    atomic_numbers : list[int]
        Elements the model knows.
    source : str
        Where the weights came from (a path, or ``"scratch"``).
    source_sha256 : str
        SHA-256 of the file the weights came from (empty for scratch).
    """

    kind: str = "base"
    export_suffix: str | None = None
    #: False for models that can only be evaluated (exported TorchScript): embedding only.
    trainable: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.head_specs: dict[str, HeadSpec] = {}
        self.source = "scratch"
        self.source_sha256 = ""

    # --- data -----------------------------------------------------------------------
    @property
    def atomic_numbers(self) -> list[int]:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def atoms_to_graph(self, atoms) -> Any:
        """One structure as this backbone's graph object (built with ``self.dtype``)."""
        raise NotImplementedError

    def collate_graphs(self, graphs: Sequence[Any]) -> Any:
        raise NotImplementedError

    def check_elements(self, structures, source: str = "the data") -> None:
        """Raise ``CheckpointError`` naming any element the model does not know."""
        from ase.data import chemical_symbols

        known = set(self.atomic_numbers)
        for position, atoms in enumerate(structures):
            unknown = sorted(set(int(z) for z in atoms.numbers) - known)
            if unknown:
                index = atoms.info.get("structure_index", position)
                names = ", ".join(chemical_symbols[z] for z in unknown)
                model_names = ", ".join(chemical_symbols[z] for z in sorted(known))
                raise CheckpointError(
                    f"Element(s) {names} in structure {index} of {source} are not known to "
                    f"the {self.kind} model from {self.source} (its elements: {model_names})."
                )

    # --- model ----------------------------------------------------------------------
    def forward(
        self,
        graph: Any,
        compute_forces: bool = False,
        compute_stress: bool = False,
        features: Sequence[str] = (),
    ) -> BackboneOutput:
        raise NotImplementedError

    def feature_names(self) -> list[str]:
        """Feature kinds this backbone can return: ``backbone``, ``last_layer``, extras."""
        return list(FEATURE_KINDS)

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters split into ``backbone``, ``heads`` (pretrained readouts),
        ``new_heads`` (heads added for new targets) and ``lora`` (adapters added by
        ``add_lora``). Every parameter is in exactly one."""
        raise NotImplementedError

    def add_head(self, spec: HeadSpec, init: str = "fresh") -> None:
        """Add a head for a new target: freshly initialised (``init="fresh"``) or a copy
        of the energy head (``init="energy"``, metatrain's ``inherit_heads``)."""
        raise NotImplementedError

    def reset_parameters(self, seed: int | None = None) -> None:
        """Re-initialise every weight (same architecture, random init: ``scratch``)."""
        raise NotImplementedError

    def add_lora(self, rank: int, alpha: float) -> None:
        r"""Inject low-rank adapters (LoRA, Hu et al. 2021) into the model's linear layers.

        .. math::

            y = W x \quad\longrightarrow\quad y = W x + \frac{\alpha}{r} B A x,
            \qquad A \in \mathbb{R}^{r \times d_{in}},\ B \in \mathbb{R}^{d_{out} \times r}

        with ``B = 0`` at the start, so predictions are unchanged until training moves it.
        Equivariant layers get equivariant adapters. The adapter parameters are reported by
        ``parameter_groups()`` under ``"lora"``; whether anything is frozen is the
        strategy's business, not this method's.

        Parameters
        ----------
        rank : int
            r >= 1, the width of the bottleneck (per irrep for equivariant layers).
        alpha : float
            Scale of the update; the adapter output is multiplied by ``alpha / rank``.
        """
        raise NotImplementedError(f"The {self.kind} backbone does not support LoRA adapters (strategy=lora)")

    def merge_lora(self) -> None:
        r"""Fold the adapters into the base weights, :math:`W \leftarrow W + (\alpha/r) B A`,
        and remove them: a plain model (the architecture ``save``/``export`` know) whose
        predictions equal the adapted model's to floating-point rounding. Without adapters
        it does nothing."""
        raise NotImplementedError(f"The {self.kind} backbone does not support LoRA adapters (strategy=lora)")

    # --- files ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Save weights + hyperparameters in mlipprobe's format (no code in the file)."""
        raise NotImplementedError

    def export(self, path: str | Path) -> Path:
        """Write the model in its upstream package's own format (``export_suffix``)."""
        raise NotImplementedError

    # --- API ------------------------------------------------------------------------
    @torch.no_grad()
    def embed(
        self,
        structures,
        batch_size: int = 32,
        features: Sequence[str] = FEATURE_KINDS,
    ) -> dict[str, np.ndarray]:
        """Per-atom features of ``structures``, rows in input order.

        Returns ``{kind: ndarray (n_atoms_total, d)}`` for each requested kind.
        """
        structures = list(structures)
        self.check_elements(structures)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        chunks: dict[str, list[np.ndarray]] = {kind: [] for kind in features}
        for start in range(0, len(structures), batch_size):
            graphs = [self.atoms_to_graph(a) for a in structures[start : start + batch_size]]
            graph = self.collate_graphs(graphs).to(device)
            output = self(graph, features=features)
            for kind in features:
                chunks[kind].append(output.features[kind].detach().cpu().numpy())
        self.train(was_training)
        return {kind: np.concatenate(parts, axis=0) for kind, parts in chunks.items()}
