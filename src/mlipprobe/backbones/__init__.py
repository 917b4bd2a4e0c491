"""Backbones: load a checkpoint of any supported kind, or build one from hyperparameters.

``load_backbone(path, trusted=False)`` detects the kind from the file:

- mlipprobe checkpoints (``*.pt`` written by ``train.py``): weights and JSON
  hyperparameters only, loaded with ``torch.load(weights_only=True)``; always safe.
- MACE ``.model`` files (mace-torch): a whole pickled ``torch.nn.Module``. Unpickling runs
  code stored in the file, so they are refused unless ``trusted=True`` (Hydra:
  ``backbone.trusted=true``). Only pass files you made or got from a source you trust.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from mlipprobe.backbones.base import (
    Backbone,
    BackboneOutput,
    CheckpointError,
    HeadSpec,
    UntrustedCheckpointError,
)
from mlipprobe.io import sha256_of_file

__all__ = [
    "Backbone",
    "BackboneOutput",
    "CheckpointError",
    "HeadSpec",
    "UntrustedCheckpointError",
    "build_backbone",
    "load_backbone",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _read_payload(path: Path):
    """``torch.load`` with ``weights_only=True``; ``None`` if the file holds pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        if zipfile.is_zipfile(path) and "constants.pkl" in zipfile.ZipFile(path).namelist():
            raise CheckpointError(
                f"{path} is a TorchScript (exported) model; mlipprobe loads MACE .model files "
                "and its own .pt checkpoints"
            ) from error
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint: {error}") from error


def load_backbone(
    path: str | Path,
    trusted: bool = False,
    head: str | None = None,
    dtype: str | torch.dtype = "float32",
) -> Backbone:
    """Load a backbone from a checkpoint file, detecting its kind.

    Parameters
    ----------
    path : str or Path
        An mlipprobe ``.pt`` checkpoint or a mace-torch ``.model`` file.
    trusted : bool
        Allow full unpickling (runs code from the file). Needed for mace ``.model`` files.
    head : str, optional
        Head of a multi-head MACE model.
    dtype : {"float32", "float64"}
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    dtype = resolve_dtype(dtype)
    payload = _read_payload(path)
    if payload is None:
        if not trusted:
            raise UntrustedCheckpointError(
                f"{path} is a whole pickled model (a mace-torch .model file); loading it runs "
                "code stored in the file. If you trust its source, load it with "
                "backbone.trusted=true (Python: trusted=True)."
            )
        backbone = _load_pickled_module(path, head, dtype)
    elif isinstance(payload, dict) and payload.get("format") == "mlipprobe-backbone":
        backbone = _from_payload(path, payload).to(dtype)
        if head is not None and getattr(backbone, "head_name", head) != head:
            raise CheckpointError(f"{path} was saved with head '{backbone.head_name}', not '{head}'")
    else:
        keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a checkpoint mlipprobe knows (found {keys}); expected a mace-torch "
            ".model file or an mlipprobe .pt checkpoint"
        )
    backbone.source = str(path)
    backbone.source_sha256 = sha256_of_file(path)
    return backbone


def _load_pickled_module(path: Path, head, dtype) -> Backbone:
    from mlipprobe.backbones.mace import import_mace, load_mace_module

    import_mace()  # the classes must be importable before unpickling
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path} cannot be unpickled: {error}") from error
    return load_mace_module(module, head, dtype)


def _from_payload(path: Path, payload: dict) -> Backbone:
    kind = payload.get("kind")
    if kind == "mace":
        from mlipprobe.backbones.mace import MaceBackbone

        return MaceBackbone.from_payload(payload)
    raise CheckpointError(f"{path} holds a backbone of unknown kind '{kind}'")


def build_backbone(
    checkpoint: str | None = None,
    kind: str = "mace",
    hypers: dict | None = None,
    trusted: bool = False,
    head: str | None = None,
    dtype: str = "float32",
    structures=None,
) -> Backbone:
    """Hydra entry: load ``checkpoint`` if given, else build ``kind`` from ``hypers``.

    ``structures`` (training data) supply the data-dependent constants of a model built
    from hyperparameters (elements, reference energies, neighbour counts).
    """
    if checkpoint is not None:
        return load_backbone(checkpoint, trusted=trusted, head=head, dtype=dtype)
    if hypers is None:
        raise CheckpointError("Give backbone.checkpoint=PATH or backbone.hypers to build a model")
    if kind == "mace":
        from mlipprobe.backbones.mace import MaceBackbone

        return MaceBackbone.from_hypers(dict(hypers), structures, dtype=resolve_dtype(dtype), head=head)
    raise CheckpointError(f"Unknown backbone kind '{kind}' (supported: mace)")
