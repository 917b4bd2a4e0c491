"""MACE (mace-torch) as an mlipprobe backbone.

Features (per atom):

- ``backbone``: the invariant (L=0) channels of every interaction layer, concatenated in
  layer order; equal to ``MACECalculator.get_descriptors(invariants_only=True)``.
- ``last_layer``: the inputs of each readout's final linear map, concatenated over readouts:
  the L=0 channels of layer i for a linear readout, and the hidden activations
  ``act(linear_1(h))`` (of the selected head) for the non-linear last readout.
- ``layer{i}_L{l}``: the L=l block of layer i in e3nn layout (mul-major, 2l+1 components).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from mlipprobe.backbones.base import (
    Backbone,
    BackboneOutput,
    CheckpointError,
    HeadSpec,
    check_lora_settings,
)
from mlipprobe.io import atomic_torch_save

log = logging.getLogger(__name__)

_MACE = None


def import_mace():
    """Import the mace modules we use, without leaving mace's process-wide switch on.

    ``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which would make every later
    ``torch.load`` without an explicit ``weights_only=True`` unpickle arbitrary code; we
    restore the previous value right after the import (and pass ``weights_only`` everywhere).
    """
    global _MACE
    if _MACE is not None:
        return _MACE
    torch.serialization.add_safe_globals([slice])  # e3nn loads its constants at import
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    try:
        import mace
        import mace.data
        import mace.modules
        import mace.tools
        from mace.modules import blocks, lora
        from mace.tools import torch_geometric, torch_tools
        from mace.tools.scripts_utils import extract_config_mace_model
    except ImportError as error:  # pragma: no cover - dependency is required
        raise ImportError("The MACE backbone needs mace-torch: pip install mace-torch") from error
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous
    from e3nn import o3

    _MACE = dict(
        version=mace.__version__,
        data=mace.data,
        modules=mace.modules,
        blocks=blocks,
        lora=lora,
        tools=mace.tools,
        torch_geometric=torch_geometric,
        torch_tools=torch_tools,
        extract_config=extract_config_mace_model,
        o3=o3,
    )
    return _MACE


# --- hyperparameters <-> JSON ----------------------------------------------------------

_IRREPS_KEYS = ("hidden_irreps", "MLP_irreps", "edge_irreps")
_ARRAY_KEYS = ("atomic_energies", "atomic_inter_scale", "atomic_inter_shift")


def _gate_name(gate) -> str:
    for name, function in import_mace()["modules"].gate_dict.items():
        if function is gate:
            return name
    raise CheckpointError(f"MACE gate {gate!r} is not one mace-torch can name")


def hypers_from_model(model: nn.Module) -> dict:
    """JSON-able constructor arguments of a ``ScaleShiftMACE`` (mace's own extraction)."""
    m = import_mace()
    config = m["extract_config"](model)
    if "error" in config:
        raise CheckpointError(config["error"])
    if config.get("cueq_config") is not None:
        raise CheckpointError("cuEquivariance MACE models are not supported: convert to e3nn first")
    hypers: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("interaction_cls", "interaction_cls_first", "readout_cls"):
            value = value.__name__
        elif key == "gate":
            value = _gate_name(value)
        elif key in _IRREPS_KEYS:
            value = None if value is None else str(value)
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            value = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
            value = value.tolist()
        hypers[key] = value
    return hypers


def model_from_hypers(hypers: dict) -> nn.Module:
    """Build a freshly initialised ``ScaleShiftMACE`` from ``hypers_from_model`` output."""
    m = import_mace()
    modules = m["modules"]
    kwargs = dict(hypers)
    kwargs["interaction_cls"] = modules.interaction_classes[kwargs["interaction_cls"]]
    kwargs["interaction_cls_first"] = modules.interaction_classes[kwargs["interaction_cls_first"]]
    kwargs["readout_cls"] = modules.readout_classes[kwargs.get("readout_cls", "NonLinearReadoutBlock")]
    kwargs["gate"] = modules.gate_dict[kwargs["gate"]]
    for key in _IRREPS_KEYS:
        if kwargs.get(key) is not None:
            kwargs[key] = m["o3"].Irreps(kwargs[key])
    for key in _ARRAY_KEYS:
        kwargs[key] = np.asarray(kwargs[key], dtype=float)
    if kwargs.get("distance_transform") is None:
        kwargs["distance_transform"] = "None"
    kwargs.pop("cueq_config", None)
    return modules.ScaleShiftMACE(**kwargs)


def as_scale_shift_mace(model: nn.Module) -> nn.Module:
    """Plain ``MACE`` behaves exactly as ``ScaleShiftMACE`` with scale 1 and shift 0."""
    modules = import_mace()["modules"]
    if type(model).__name__ == "ScaleShiftMACE":
        return model
    if type(model) is not modules.MACE:
        raise CheckpointError(
            f"Unsupported MACE model class {type(model).__name__}: "
            "mlipprobe supports MACE and ScaleShiftMACE energy models"
        )
    model.scale_shift = modules.ScaleShiftBlock(scale=1.0, shift=0.0)
    model.__class__ = modules.ScaleShiftMACE
    return model


# --- heads -------------------------------------------------------------------------------


class MaceTargetHead(nn.Module):
    """A MACE-style readout for a new target: one readout per interaction layer, summed.

    Invariant targets use a linear readout on every layer but the last and a gated MLP on
    the last (as MACE's energy head); vector targets (``spec.vector``) use linear ``1x1o``
    readouts of the layers that carry L=1 features. Outputs are ``y = scale * sum + shift``
    with ``scale``/``shift`` buffers set from training-data statistics.
    """

    def __init__(self, spec: HeadSpec, layer_irreps: Sequence, mlp_irreps, gate) -> None:
        super().__init__()
        m = import_mace()
        o3, blocks = m["o3"], m["blocks"]
        self.spec = spec
        out = o3.Irreps("1x1o") if spec.vector else o3.Irreps(f"{spec.dim}x0e")
        readouts, layers = [], []
        for index, irreps in enumerate(layer_irreps):
            irreps = o3.Irreps(irreps)
            if spec.vector:
                if not any(ir == o3.Irrep("1o") for _, ir in irreps):
                    continue
                readouts.append(blocks.LinearReadoutBlock(irreps, out))
            elif index == len(layer_irreps) - 1:
                readouts.append(blocks.NonLinearReadoutBlock(irreps, mlp_irreps, gate, out))
            else:
                readouts.append(blocks.LinearReadoutBlock(irreps, out))
            layers.append(index)
        if not readouts:
            raise CheckpointError(
                f"Target '{spec.name}' is a vector but this MACE model has no L=1 features"
            )
        self.readouts = nn.ModuleList(readouts)
        self.layers = layers
        out_dim = 3 if spec.vector else spec.dim
        self.register_buffer("scale", torch.ones(1 if spec.vector else out_dim))
        self.register_buffer("shift", torch.zeros(out_dim))

    def forward(self, layer_features: Sequence[torch.Tensor]) -> torch.Tensor:
        total = sum(readout(layer_features[i]) for readout, i in zip(self.readouts, self.layers))
        return total * self.scale + self.shift


# --- the backbone ----------------------------------------------------------------------


class MaceBackbone(Backbone):
    """A MACE model behind mlipprobe's backbone interface.

    Parameters
    ----------
    model : ScaleShiftMACE
        The mace-torch module.
    head : str, optional
        Head of a multi-head model to use; required when the model has several.
    """

    kind = "mace"
    export_suffix = ".model"

    def __init__(self, model: nn.Module, head: str | None = None) -> None:
        super().__init__()
        m = import_mace()
        self.model = as_scale_shift_mace(model)
        self.hypers = hypers_from_model(self.model)
        heads = list(getattr(self.model, "heads", ["Default"]))
        if head is None and len(heads) > 1:
            raise CheckpointError(
                f"This MACE model has several heads {heads}: choose one with backbone.head=NAME"
            )
        if head is not None and head not in heads:
            raise CheckpointError(f"MACE head '{head}' not in the model's heads {heads}")
        self.head_name = head or heads[0]
        self.head_index = heads.index(self.head_name)
        self.heads_available = heads
        self.r_max = float(self.model.r_max)
        self.z_table = m["tools"].AtomicNumberTable([int(z) for z in self.model.atomic_numbers])
        self.layer_irreps = [m["o3"].Irreps(str(p.linear.irreps_out)) for p in self.model.products]
        self.new_heads = nn.ModuleDict()

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_hypers(cls, hypers: dict, structures=None, dtype: torch.dtype = torch.float32, head=None):
        """A randomly initialised model; data-dependent constants from ``structures``.

        ``atomic_numbers``, ``atomic_energies`` (least-squares E0s), ``avg_num_neighbors``
        and the interaction-energy scale/shift are computed from the training structures
        unless given in ``hypers``.
        """
        from mlipprobe.data.statistics import energy_statistics

        hypers = {key: value for key, value in dict(hypers).items() if value is not None}
        defaults = dict(
            interaction_cls="RealAgnosticResidualInteractionBlock",
            gate="silu",
            radial_MLP=[64, 64, 64],
            heads=["Default"],
            readout_cls="NonLinearReadoutBlock",
        )
        hypers = {**defaults, **hypers}
        hypers.setdefault("interaction_cls_first", hypers["interaction_cls"])
        needs_data = [
            k
            for k in ("atomic_numbers", "atomic_energies", "avg_num_neighbors")
            if k not in hypers
        ]
        if needs_data:
            if not structures:
                raise CheckpointError(
                    f"Building MACE from hyperparameters needs training data for {needs_data}"
                )
            stats = energy_statistics(structures, hypers.get("r_max", 5.0), hypers.get("atomic_numbers"))
            hypers.setdefault("atomic_numbers", stats["atomic_numbers"])
            hypers.setdefault("atomic_energies", stats["atomic_energies"])
            hypers.setdefault("avg_num_neighbors", stats["avg_num_neighbors"])
            hypers.setdefault("atomic_inter_shift", stats["interaction_shift"])
            hypers.setdefault("atomic_inter_scale", stats["interaction_scale"])
        hypers.setdefault("atomic_inter_shift", 0.0)
        hypers.setdefault("atomic_inter_scale", 1.0)
        hypers["num_elements"] = len(hypers["atomic_numbers"])
        model = model_from_hypers(hypers)
        return cls(model, head=head).to(dtype)

    @classmethod
    def from_payload(cls, payload: dict) -> "MaceBackbone":
        """Rebuild from an mlipprobe checkpoint (weights + JSON hyperparameters)."""
        hypers = json.loads(payload["hypers"])
        extra = json.loads(payload["extra"])
        backbone = cls(model_from_hypers(hypers), head=extra.get("head"))
        for spec in json.loads(payload["new_heads"]):
            backbone.add_head(HeadSpec(**spec))
        dtype = next(v.dtype for v in payload["state_dict"].values() if v.is_floating_point())
        backbone.to(dtype)
        backbone.load_state_dict(payload["state_dict"])
        return backbone

    # --- data --------------------------------------------------------------------------
    @property
    def atomic_numbers(self) -> list[int]:
        return [int(z) for z in self.z_table.zs]

    def atoms_to_graph(self, atoms):
        m = import_mace()
        keys = m["data"].KeySpecification()
        with m["torch_tools"].default_dtype(self.dtype):
            config = m["data"].config_from_atoms(atoms, key_specification=keys, head_name=self.head_name)
            return m["data"].AtomicData.from_config(
                config, z_table=self.z_table, cutoff=self.r_max, heads=self.heads_available
            )

    def collate_graphs(self, graphs):
        return import_mace()["torch_geometric"].Batch.from_data_list(list(graphs))

    # --- model -------------------------------------------------------------------------
    def forward(self, graph, compute_forces=False, compute_stress=False, features=()):
        out = self.model(
            graph.to_dict(),
            training=self.training,
            compute_force=compute_forces,
            compute_stress=compute_stress,
        )
        layers = torch.split(out["node_feats"], [irreps.dim for irreps in self.layer_irreps], dim=-1)
        return BackboneOutput(
            energy=out["energy"],
            forces=out["forces"] if compute_forces else None,
            stress=out["stress"] if compute_stress else None,
            heads={name: head(layers) for name, head in self.new_heads.items()},
            features={kind: self._feature(kind, layers) for kind in features},
        )

    def feature_names(self) -> list[str]:
        names = ["backbone", "last_layer"]
        for i, irreps in enumerate(self.layer_irreps):
            names += [f"layer{i}_L{l}" for l in sorted({ir.l for _, ir in irreps})]
        return names

    def _irrep_slice(self, layer: torch.Tensor, irreps, l: int) -> torch.Tensor:
        parts = [layer[:, s] for (_, ir), s in zip(irreps, irreps.slices()) if ir.l == l]
        return torch.cat(parts, dim=-1)

    def _feature(self, kind: str, layers: Sequence[torch.Tensor]) -> torch.Tensor:
        if kind == "backbone":
            return torch.cat(
                [self._irrep_slice(x, irreps, 0) for x, irreps in zip(layers, self.layer_irreps)],
                dim=-1,
            )
        if kind == "last_layer":
            return torch.cat(list(self._readout_inputs(layers)), dim=-1)
        for i, irreps in enumerate(self.layer_irreps):
            for l in sorted({ir.l for _, ir in irreps}):
                if kind == f"layer{i}_L{l}":
                    return self._irrep_slice(layers[i], irreps, l)
        raise KeyError(f"Unknown MACE feature '{kind}'; available: {self.feature_names()}")

    def _readout_inputs(self, layers):
        blocks = import_mace()["blocks"]
        readouts = list(self.model.readouts)
        for i, readout in enumerate(readouts):
            index = len(layers) - 1 if len(readouts) == 1 else i
            x = layers[index]
            if isinstance(readout, blocks.LinearReadoutBlock):
                yield self._irrep_slice(x, self.layer_irreps[index], 0)
                continue
            hidden = readout.non_linearity(readout.linear_1(x))
            width = hidden.shape[-1] // len(self.heads_available)
            yield hidden[:, self.head_index * width : (self.head_index + 1) * width]

    def parameter_groups(self):
        groups = {"backbone": [], "heads": [], "new_heads": [], "lora": []}
        for name, parameter in self.named_parameters():
            if _LORA_PARTS & set(name.split(".")):
                groups["lora"].append((name, parameter))
            elif name.startswith("model.readouts."):
                groups["heads"].append((name, parameter))
            elif name.startswith("new_heads."):
                groups["new_heads"].append((name, parameter))
            else:
                groups["backbone"].append((name, parameter))
        return groups

    def add_head(self, spec: HeadSpec, init: str = "fresh") -> None:
        if spec.name in self.new_heads:
            raise CheckpointError(f"The model already has a head named '{spec.name}'")
        m = import_mace()
        mlp = m["o3"].Irreps(self.hypers["MLP_irreps"])
        gate = m["modules"].gate_dict[self.hypers["gate"]]
        head = MaceTargetHead(spec, self.layer_irreps, mlp, gate).to(self.dtype)
        if init == "energy":
            if spec.vector or spec.dim != 1 or len(self.heads_available) != 1:
                raise CheckpointError(
                    f"Only a scalar head of a single-head model can be initialised from the energy "
                    f"head ('{spec.name}' has {3 if spec.vector else spec.dim} components): use strategy.head_init=fresh"
                )
            head.readouts.load_state_dict(self.model.readouts.state_dict())
        elif init != "fresh":
            raise CheckpointError(f"head_init must be 'fresh' or 'energy', got '{init}'")
        self.new_heads[spec.name] = head
        self.head_specs[spec.name] = spec

    def reset_parameters(self, seed: int | None = None) -> None:
        with _seeded(seed):
            fresh = model_from_hypers(self.hypers).to(self.dtype)
            self.model.load_state_dict(fresh.state_dict())
            for name, spec in list(self.head_specs.items()):
                del self.new_heads[name], self.head_specs[name]
                self.add_head(spec)

    def add_lora(self, rank: int, alpha: float) -> None:
        """mace's own adapters (``mace.modules.lora``, as ``mace_run_train --lora``) on
        every linear layer of the MACE model: node embedding, interactions (including the
        radial MLPs), products and readouts; heads added for new targets get none.

        An e3nn ``o3.Linear`` gets an equivariant bottleneck, ``A: irreps_in -> rank x
        (each irrep shared by input and output) -> B: irreps_out``, so the update stays
        O(3)-equivariant; dense layers get a plain rank-``rank`` pair. ``B = 0`` and
        ``A ~ N(0, 1e-3^2)`` at the start (mace's initialisation). ``requires_grad`` of the
        existing parameters is left as it was.
        """
        check_lora_settings(rank, alpha)
        if self.lora_layers():
            raise CheckpointError("This MACE model already has LoRA adapters: merge_lora() first")
        requires_grad = {id(p): p.requires_grad for p in self.model.parameters()}
        import_mace()["lora"].inject_lora(self.model, rank=rank, alpha=alpha)
        for parameter in self.model.parameters():
            parameter.requires_grad_(requires_grad.get(id(parameter), True))
        for layer in self.lora_layers():
            layer.register_forward_pre_hook(_drop_cached_merged_weight)

    def merge_lora(self) -> None:
        """mace's ``merge_lora_weights``: each adapted layer is replaced by its base layer with
        ``W + (alpha/rank) B A`` (per irrep path for ``o3.Linear``) folded in, so the module
        tree and parameter names are the plain MACE model's again."""
        if not self.lora_layers():
            return
        requires_grad = {id(p): p.requires_grad for p in self.model.parameters()}
        import_mace()["lora"].merge_lora_weights(self.model)
        for parameter in self.model.parameters():
            parameter.requires_grad_(requires_grad[id(parameter)])

    def lora_layers(self) -> list[nn.Module]:
        """The adapted layers (mace's ``LoRAO3Linear``, ``LoRADenseLinear``, ``LoRAFCLayer``)."""
        lora = import_mace()["lora"]
        wrappers = (lora.LoRAO3Linear, lora.LoRADenseLinear, lora.LoRAFCLayer)
        return [module for module in self.model.modules() if isinstance(module, wrappers)]

    # --- files -------------------------------------------------------------------------
    def save(self, path, metadata: dict | None = None) -> Path:
        payload = {
            "format": "mlipprobe-backbone",
            "format_version": 1,
            "kind": self.kind,
            "hypers": json.dumps(self.hypers),
            "new_heads": json.dumps([spec.to_dict() for spec in self.head_specs.values()]),
            "extra": json.dumps({"head": self.head_name}),
            "metadata": json.dumps({"mace_version": import_mace()["version"], **(metadata or {})}),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        return atomic_torch_save(payload, path)

    def export(self, path) -> Path:
        """A mace-compatible ``.model`` (whole pickled module, mace's format) of the energy
        model; heads added for new targets are not part of it."""
        import copy

        model = copy.deepcopy(self.model).cpu()
        return atomic_torch_save(model, path)


_LORA_PARTS = {"lora_A", "lora_B"}


def _drop_cached_merged_weight(layer: nn.Module, inputs) -> None:
    """Forward pre-hook on mace's adapters. Without gradients they reuse ``W + s B A``
    cached by their first such call and drop it only on a call with gradients, so a
    no-grad forward after an optimizer step or a ``load_state_dict`` (validation of an
    energy-only model, testing the best checkpoint, EMA weight swaps) would use stale
    weights. Dropping the cache before every call keeps them exact (a few small matmuls)."""
    for cache in ("_cached_merged_weight", "_cached_delta"):
        if hasattr(layer, cache):
            setattr(layer, cache, None)


@contextlib.contextmanager
def _seeded(seed: int | None):
    if seed is None:
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def load_mace_module(model: nn.Module, head: str | None, dtype: torch.dtype) -> MaceBackbone:
    modules = import_mace()["modules"]
    if not isinstance(model, modules.MACE):
        raise CheckpointError(f"Expected a MACE model, the file holds a {type(model).__name__}")
    return MaceBackbone(model, head=head).to(dtype)
