"""PET (metatrain) as an mlipprobe backbone.

metatrain is used as a library: ``metatrain.pet.PET`` evaluated on metatomic ``System``
objects with neighbour lists, inside our LightningModule (not metatrain's trainer).

The wrapped model always runs in metatrain's *evaluation* mode, in which PET applies its
scaler and adds its composition (per-element) baseline, so the energy we train on is the
same total energy metatrain's own evaluation gives for the checkpoint. PET has no dropout,
so training and evaluation differ in nothing else (long-range PET, which switches Ewald
on in training, is refused).

Features (per atom):

- ``backbone``: metatrain's ``"feature"`` output (node and edge features of every GNN
  layer, edges summed over neighbours with the cutoff weights);
- ``last_layer``: ``mtt::aux::{target}_last_layer_features`` of the energy target, or of
  the first new target once a head was added for one (``transfer_*``).

Files:

- ``.ckpt`` from ``mtt train`` (pickled: needs ``trusted=True``), loaded with metatrain's
  own ``model_from_checkpoint``, composition and scaler included;
- mlipprobe ``.pt`` checkpoints (weights + JSON hyperparameters, safe);
- exported TorchScript ``.pt`` models (:class:`ExportedPetBackbone`): embedding only.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from mlipprobe.backbones.base import Backbone, BackboneOutput, CheckpointError, HeadSpec, check_lora_settings
from mlipprobe.io import atomic_path, atomic_torch_save

log = logging.getLogger(__name__)

#: metatrain's ``heads`` fine-tuning method trains exactly these modules of ``model.backend``.
HEAD_MODULES = ("node_heads", "edge_heads", "node_last_layers", "edge_last_layers")
#: metatrain's default LoRA targets: the attention projections of every transformer layer.
LORA_MODULES = ("input_linear", "output_linear")


def import_metatrain():
    try:
        import metatensor.torch  # noqa: F401  (registers the TorchScript classes)
        import metatomic.torch  # noqa: F401
        from metatrain.pet import PET
    except ImportError as error:  # pragma: no cover - dependency is required
        raise ImportError("The PET backbone needs metatrain: pip install metatrain") from error
    return PET


def _output_name(target: str) -> str:
    """metatomic wants non-standard outputs namespaced: ``gap`` -> ``mtt::gap``."""
    return target if target == "energy" or "::" in target else f"mtt::{target}"


# --- target information <-> JSON ---------------------------------------------------------


def target_info_to_dict(info) -> dict:
    """The parts of a metatrain ``TargetInfo`` we can rebuild it from."""
    if info.is_spherical or info.is_atomic_basis:
        raise CheckpointError("PET targets of spherical/atomic-basis type cannot be saved in mlipprobe's format")
    block = info.layout.block()
    rank = len(block.components) if info.is_cartesian else 0
    return {
        "quantity": info.quantity,
        "unit": info.unit,
        "description": info.description,
        "per_atom": bool(info.per_atom),
        "rank": rank,
        "num_subtargets": len(block.properties),
        "gradients": list(info.gradients),
    }


def target_info_from_dict(name: str, spec: dict):
    from metatrain.utils.data.target_info import get_energy_target_info, get_generic_target_info

    if spec["quantity"] == "energy" and spec["rank"] == 0 and not spec["per_atom"]:
        return get_energy_target_info(
            name,
            {"unit": spec["unit"], "description": spec.get("description", "")},
            add_position_gradients="positions" in spec.get("gradients", []),
            add_strain_gradients="strain" in spec.get("gradients", []),
        )
    kind = "scalar" if spec["rank"] == 0 else {"cartesian": {"rank": spec["rank"]}}
    return get_generic_target_info(
        name,
        {
            "quantity": spec["quantity"],
            "unit": spec["unit"],
            "description": spec.get("description", ""),
            "type": kind,
            "sample_kind": "atom" if spec["per_atom"] else "system",
            "num_subtargets": spec["num_subtargets"],
        },
    )


def dataset_info_to_dict(info) -> dict:
    return {
        "length_unit": info.length_unit,
        "atomic_types": [int(z) for z in info.atomic_types],
        "targets": {name: target_info_to_dict(t) for name, t in info.targets.items()},
    }


def dataset_info_from_dict(data: dict):
    from metatrain.utils.data import DatasetInfo

    return DatasetInfo(
        length_unit=data["length_unit"],
        atomic_types=data["atomic_types"],
        targets={name: target_info_from_dict(name, spec) for name, spec in data["targets"].items()},
    )


# --- graphs ------------------------------------------------------------------------------


class PetGraph:
    """A batch of metatomic ``System`` objects with their neighbour lists."""

    def __init__(self, systems: list) -> None:
        self.systems = systems

    def to(self, device) -> "PetGraph":
        return PetGraph([system.to(device=device) for system in self.systems])

    def __len__(self) -> int:
        return len(self.systems)


def _systems_with_gradients(systems: list, forces: bool, stress: bool):
    """Copies of ``systems`` whose positions (and a strain) require gradients.

    PET rebuilds the edge vectors from positions, cells and the neighbour list's cell
    shifts, so the neighbour lists are reused unchanged. Returns ``(systems, strains)``.
    """
    from metatomic.torch import System

    rebuilt, strains = [], []
    for system in systems:
        positions, cell = system.positions.detach(), system.cell.detach()
        if forces:
            positions = positions.clone().requires_grad_(True)
        strain = None
        if stress:
            strain = torch.eye(3, dtype=cell.dtype, device=cell.device, requires_grad=True)
            positions, cell = positions @ strain, cell @ strain
        new = System(types=system.types, positions=positions, cell=cell, pbc=system.pbc)
        with warnings.catch_warnings():  # PET does not read the lists' distance vectors
            warnings.filterwarnings("ignore", message="This system's positions or cell requires grad")
            for options in system.known_neighbor_lists():
                new.add_neighbor_list(options, system.get_neighbor_list(options))
        rebuilt.append(new)
        strains.append(strain)
    return rebuilt, strains


class OutputScaling(nn.Module):
    """Per-atom ``y = scale * raw + shift`` of a new target (statistics of the labels)."""

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        self.spec = spec
        width = 3 if spec.vector else spec.dim
        self.register_buffer("scale", torch.ones(1 if spec.vector else width))
        self.register_buffer("shift", torch.zeros(width))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return raw * self.scale + (0.0 if self.spec.vector else self.shift)


# --- the backbone ----------------------------------------------------------------------


class PetBackbone(Backbone):
    """A metatrain PET model behind mlipprobe's backbone interface."""

    kind = "pet"
    export_suffix = ".ckpt"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        import_metatrain()
        if model.hypers["long_range"]["enable"]:
            raise CheckpointError("Long-range PET models are not supported by mlipprobe")
        self.model = model.eval()
        self.new_heads = nn.ModuleDict()
        self.energy_target = next(
            (name for name, t in model.dataset_info.targets.items() if t.quantity == "energy" and not t.per_atom),
            None,
        )
        if self.energy_target is None:
            raise CheckpointError(
                f"This PET model has no per-structure energy target (targets: {list(model.dataset_info.targets)})"
            )
        self._lora = None

    def train(self, mode: bool = True) -> "PetBackbone":
        super().train(mode)
        self.model.eval()  # scaler + composition always applied (see module docstring)
        return self

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_metatrain_checkpoint(cls, checkpoint: dict, source: Path) -> "PetBackbone":
        from metatrain.utils.io import model_from_checkpoint

        if checkpoint.get("architecture_name") != "pet":
            raise CheckpointError(
                f"{source} is a metatrain checkpoint of architecture "
                f"'{checkpoint.get('architecture_name')}'; mlipprobe supports 'pet'"
            )
        try:
            model = model_from_checkpoint(checkpoint, context="finetune")
        except Exception as error:
            raise CheckpointError(f"metatrain cannot load {source}: {error}") from error
        for module in model.modules():  # a LoRA checkpoint: fold the adapters in
            if type(module).__name__ == "LoRALinear":
                raise CheckpointError(
                    f"{source} holds LoRA adapters; export or merge it with metatrain first"
                )
        model.finetune_config = {}
        return cls(model)

    @classmethod
    def from_hypers(cls, hypers: dict, structures=None, dtype: torch.dtype = torch.float32, head=None):
        """A randomly initialised PET; elements and composition baseline from ``structures``."""
        from metatrain.utils.architectures import get_default_hypers
        from metatrain.utils.data import DatasetInfo
        from metatrain.utils.data.target_info import get_energy_target_info

        PET = import_metatrain()
        if not structures:
            raise CheckpointError("Building PET from hyperparameters needs the training structures")
        full = get_default_hypers("pet")["model"]
        unknown = set(hypers) - set(full)
        if unknown:
            raise CheckpointError(f"Unknown PET hyperparameter(s) {sorted(unknown)}; known: {sorted(full)}")
        full.update(hypers)
        types = sorted({int(z) for atoms in structures for z in atoms.numbers})
        info = DatasetInfo(
            length_unit="angstrom",
            atomic_types=types,
            targets={"energy": get_energy_target_info("energy", {"unit": "eV"})},
        )
        backbone = cls(PET(full, info)).to(dtype)
        backbone.fit_composition(structures)
        return backbone

    @classmethod
    def from_payload(cls, payload: dict) -> "PetBackbone":
        """Rebuild from an mlipprobe checkpoint (weights + JSON hyperparameters)."""
        PET = import_metatrain()
        extra = json.loads(payload["extra"])
        model = PET(json.loads(payload["hypers"]), dataset_info_from_dict(extra["dataset_info"]))
        backbone = cls(model)
        for spec in json.loads(payload["new_heads"]):
            backbone.add_head(HeadSpec(**spec))
        state = payload["state_dict"]
        dtype = next(v.dtype for k, v in state.items() if v.is_floating_point() and "gnn_layers" in k)
        backbone.to(dtype)
        backbone.load_state_dict(state)
        backbone._sync_buffers()
        return backbone

    def _sync_buffers(self) -> None:
        self.model.additive_models[0].sync_tensor_maps()
        self.model.scaler.sync_tensor_maps()

    def fit_composition(self, structures) -> None:
        """Per-element energies of ``structures`` (least squares, as for MACE's E0s) as
        metatrain's composition baseline; nothing to fit without energy labels."""
        from mlipprobe.data.statistics import energy_statistics

        stats = energy_statistics(structures, self.model.cutoff, self.atomic_numbers)
        weights = dict(zip(stats["atomic_numbers"], stats["atomic_energies"]))
        import metatensor.torch as mts

        composition = self.model.additive_models[0]
        composition.model.fit(fixed_weights={self.energy_target: weights}, targets_to_fit=[self.energy_target])
        fitted = composition.model.weights[self.energy_target].to("cpu", torch.float64)
        buffer = mts.save_buffer(mts.make_contiguous(fitted))  # as metatrain's composition trainer
        composition.register_buffer(f"{self.energy_target}_composition_buffer", buffer)

    # --- data --------------------------------------------------------------------------
    @property
    def atomic_numbers(self) -> list[int]:
        return [int(z) for z in self.model.atomic_types]

    @property
    def dtype(self) -> torch.dtype:
        return self.model.backend.node_embedders[0].weight.dtype

    def atoms_to_graph(self, atoms) -> PetGraph:
        from metatomic.torch import systems_to_torch
        from metatrain.utils.neighbor_lists import get_system_with_neighbor_lists

        system = systems_to_torch(atoms, dtype=self.dtype)
        return PetGraph([get_system_with_neighbor_lists(system, self.model.requested_neighbor_lists())])

    def collate_graphs(self, graphs: Sequence[PetGraph]) -> PetGraph:
        return PetGraph([system for graph in graphs for system in graph.systems])

    # --- model -------------------------------------------------------------------------
    def last_layer_target(self) -> str:
        return _output_name(next(iter(self.new_heads))) if len(self.new_heads) else self.energy_target

    def forward(self, graph: PetGraph, compute_forces=False, compute_stress=False, features=()):
        from metatomic.torch import ModelOutput

        systems, strains = graph.systems, []
        if compute_forces or compute_stress:
            systems, strains = _systems_with_gradients(systems, compute_forces, compute_stress)
        requested = {self.energy_target: ModelOutput(sample_kind="system")}
        for name in self.new_heads:
            requested[_output_name(name)] = ModelOutput(sample_kind="atom")
        for kind in features:
            requested[self._feature_output(kind)] = ModelOutput(sample_kind="atom")
        out = self.model(systems, requested)
        energy = out[self.energy_target].block().values.reshape(-1)
        forces = stress = None
        if compute_forces or compute_stress:
            inputs = ([s.positions for s in systems] if compute_forces else []) + (strains if compute_stress else [])
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=self.training and torch.is_grad_enabled())
            if compute_forces:
                forces = -torch.cat(grads[: len(systems)])
            if compute_stress:
                volumes = torch.stack([torch.abs(torch.det(s.cell)) for s in systems])
                stress = torch.stack(grads[-len(systems):]) / volumes.reshape(-1, 1, 1)
        heads = {}
        for name, scaling in self.new_heads.items():
            values = out[_output_name(name)].block().values
            heads[name] = scaling(values.reshape(values.shape[0], -1))
        return BackboneOutput(
            energy=energy,
            forces=forces,
            stress=stress,
            heads=heads,
            features={kind: out[self._feature_output(kind)].block().values for kind in features},
        )

    def _feature_output(self, kind: str) -> str:
        if kind == "backbone":
            return "feature"
        if kind == "last_layer":
            return f"mtt::aux::{self.last_layer_target().replace('mtt::', '')}_last_layer_features"
        raise KeyError(f"Unknown PET feature '{kind}'; available: {self.feature_names()}")

    def parameter_groups(self):
        heads = tuple(f"model.backend.{m}." for m in HEAD_MODULES)
        new = {_output_name(name) for name in self.new_heads}
        groups = {"backbone": [], "heads": [], "new_heads": [], "lora": []}
        for name, parameter in self.named_parameters():
            if "lora_" in name:
                groups["lora"].append((name, parameter))
            elif name.startswith(heads):
                target = name.split(".")[3]
                groups["new_heads" if target in new else "heads"].append((name, parameter))
            else:
                groups["backbone"].append((name, parameter))
        return groups

    def add_head(self, spec: HeadSpec, init: str = "fresh") -> None:
        """A new PET output for ``spec`` (heads + last layers, metatrain's ``_add_output``).

        ``init="energy"`` copies the energy head's weights into the new head, as
        metatrain's ``inherit_heads`` does (scalar targets of width 1 only).
        """
        from metatrain.utils.data import DatasetInfo
        from metatrain.pet.modules.finetuning import copy_head_weights

        if spec.name in self.new_heads:
            raise CheckpointError(f"The model already has a head named '{spec.name}'")
        name = _output_name(spec.name)
        if name in self.model.dataset_info.targets:
            raise CheckpointError(f"The PET model already predicts '{name}': pick another target name")
        info = target_info_from_dict(
            name,
            {"quantity": "", "unit": "", "per_atom": False, "rank": 1 if spec.vector else 0,
             "num_subtargets": 1 if spec.vector else spec.dim},
        )
        device = next(self.parameters()).device
        self.model.restart(DatasetInfo(
            length_unit=self.model.dataset_info.length_unit,
            atomic_types=self.model.atomic_types,
            targets={name: info},
        ))
        self.model.to(device=device, dtype=self.dtype)
        if init == "energy":
            if spec.vector or spec.dim != 1:
                raise CheckpointError(
                    f"Target '{spec.name}' has {3 if spec.vector else spec.dim} components: only a "
                    "scalar head can be initialised from the energy head (use strategy.head_init=fresh)"
                )
            copy_head_weights(self.model, self.energy_target, name)
        elif init != "fresh":
            raise CheckpointError(f"head_init must be 'fresh' or 'energy', got '{init}'")
        self.new_heads[spec.name] = OutputScaling(spec).to(device=device, dtype=self.dtype)
        self.head_specs[spec.name] = spec

    def reset_parameters(self, seed: int | None = None) -> None:
        """Fresh random weights; the composition baseline and scaler (data statistics) stay."""
        PET = import_metatrain()
        with torch.random.fork_rng():
            if seed is not None:
                torch.manual_seed(seed)
            fresh = PET(self.model.hypers, self.model.dataset_info)
        learned = {k: v for k, v in fresh.state_dict().items() if k.startswith("backend.")}
        self.model.load_state_dict(learned, strict=False)

    # --- LoRA ----------------------------------------------------------------------------
    def add_lora(self, rank: int, alpha: float) -> None:
        """metatrain's LoRA adapters on the attention projections (``input_linear``,
        ``output_linear``): ``W x + (alpha / rank) B A x`` with B = 0 at the start."""
        from metatrain.pet.modules.finetuning import LoRALinear, inject_lora_layers

        check_lora_settings(rank, alpha)
        if any(isinstance(module, LoRALinear) for module in self.model.modules()):
            raise ValueError("This PET model already has LoRA adapters: merge_lora() them first")
        parameter = next(self.parameters())
        inject_lora_layers(self.model, LORA_MODULES, rank=int(rank), alpha=float(alpha),
                           device=parameter.device, dtype=parameter.dtype)
        for module in self.model.modules():
            if isinstance(module, LoRALinear):
                nn.init.zeros_(module.lora_B.weight)  # start exactly at the parent

    def merge_lora(self) -> None:
        """Fold every adapter into its linear layer and remove the adapters."""
        from metatrain.pet.modules.finetuning import LoRALinear

        for parent in list(self.model.modules()):
            for attr, child in list(parent.named_children()):
                if isinstance(child, LoRALinear):
                    with torch.no_grad():
                        child.linear.weight += child.scaling * child.lora_B.weight @ child.lora_A.weight
                    setattr(parent, attr, child.linear)

    # --- files -------------------------------------------------------------------------
    def save(self, path, metadata: dict | None = None) -> Path:
        from metatrain import __version__

        base_targets = {
            name: info for name, info in self.model.dataset_info.targets.items()
            if name not in {_output_name(n) for n in self.new_heads}
        }
        info = dataset_info_to_dict(self.model.dataset_info)
        info["targets"] = {name: target_info_to_dict(t) for name, t in base_targets.items()}
        state = {k: v.detach().cpu() for k, v in self.state_dict().items() if isinstance(v, torch.Tensor)}
        payload = {
            "format": "mlipprobe-backbone",
            "format_version": 1,
            "kind": self.kind,
            "hypers": json.dumps(self.model.hypers),
            "new_heads": json.dumps([spec.to_dict() for spec in self.head_specs.values()]),
            "extra": json.dumps({"dataset_info": info}),
            "metadata": json.dumps({"metatrain_version": __version__, **(metadata or {})}),
            "state_dict": state,
        }
        return atomic_torch_save(payload, path)

    def export(self, path) -> Path:
        """A metatrain checkpoint (``.ckpt``): ``mtt export`` and ``mtt train`` read it."""
        checkpoint = self.model.get_checkpoint()
        for key in ("model_state_dict", "best_model_state_dict"):
            checkpoint[key] = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                               for k, v in checkpoint[key].items()}
        checkpoint["epoch"] = checkpoint["best_epoch"] = 0
        with atomic_path(path) as temporary:
            torch.save(checkpoint, temporary)
        return Path(path)


class ExportedPetBackbone(Backbone):
    """An exported (TorchScript) metatomic model: features only, it cannot be trained."""

    kind = "pet"
    trainable = False

    def __init__(self, model, source: Path) -> None:
        super().__init__()
        self.model = model
        self.source = str(source)
        capabilities = model.capabilities()
        self._types = [int(z) for z in capabilities.atomic_types]
        self._outputs = set(capabilities.outputs.keys())
        self._cutoffs = model.requested_neighbor_lists()
        self._dtype = {"float32": torch.float32, "float64": torch.float64}[capabilities.dtype]
        ll = [name for name in self._outputs if name.endswith("_last_layer_features")]
        self._last_layer = "mtt::aux::energy_last_layer_features" if "mtt::aux::energy_last_layer_features" in ll else (ll[0] if ll else None)

    @property
    def atomic_numbers(self) -> list[int]:
        return self._types

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def feature_names(self) -> list[str]:
        return ["backbone"] + (["last_layer"] if self._last_layer else [])

    def atoms_to_graph(self, atoms) -> PetGraph:
        from metatomic.torch import systems_to_torch
        from metatrain.utils.neighbor_lists import get_system_with_neighbor_lists

        return PetGraph([get_system_with_neighbor_lists(systems_to_torch(atoms, dtype=self._dtype), self._cutoffs)])

    def collate_graphs(self, graphs):
        return PetGraph([system for graph in graphs for system in graph.systems])

    def forward(self, graph: PetGraph, compute_forces=False, compute_stress=False, features=()):
        from metatomic.torch import ModelEvaluationOptions, ModelOutput

        if compute_forces or compute_stress:
            raise CheckpointError(f"{self.source} is an exported model: mlipprobe only embeds with it")
        names = {kind: self._feature_output(kind) for kind in features}
        options = ModelEvaluationOptions(
            length_unit="angstrom",
            outputs={name: ModelOutput(sample_kind="atom") for name in names.values()},
        )
        out = self.model(graph.systems, options, check_consistency=False)
        return BackboneOutput(features={kind: out[name].block().values for kind, name in names.items()})

    def _feature_output(self, kind: str) -> str:
        if kind == "backbone" and "feature" in self._outputs:
            return "feature"
        if kind == "last_layer" and self._last_layer:
            return self._last_layer
        raise KeyError(f"Exported model {self.source} has no '{kind}' feature; available: {self.feature_names()}")

    def parameter_groups(self):
        raise CheckpointError(
            f"{self.source} is an exported (TorchScript) model: it can be embedded but not "
            "trained. Fine-tune the .ckpt written by `mtt train` instead."
        )

    def add_head(self, spec: HeadSpec, init: str = "fresh") -> None:
        self.parameter_groups()

    def save(self, path, metadata=None):
        self.parameter_groups()


def load_exported(path: Path) -> ExportedPetBackbone:
    import_metatrain()
    from metatomic.torch import load_atomistic_model

    try:
        model = load_atomistic_model(str(path))
    except Exception as error:
        raise CheckpointError(f"{path} cannot be loaded as an exported metatomic model: {error}") from error
    return ExportedPetBackbone(model, path)
