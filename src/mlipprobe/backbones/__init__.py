"""Backbones: load a checkpoint of any supported kind, or build one from hyperparameters.

``load_backbone(path, trusted=False)`` detects the kind from the file:

- mlipprobe checkpoints (``*.pt`` written by ``train.py``): weights and JSON
  hyperparameters only, loaded with ``torch.load(weights_only=True)``; always safe.
- MACE ``.model`` files (mace-torch) and metatrain ``.ckpt`` checkpoints (``mtt train``,
  PET-MAD): whole pickled objects. Unpickling runs code stored in the file, so they are
  refused unless ``trusted=True`` (Hydra: ``backbone.trusted=true``). Only pass files you
  made or got from a source you trust.
- exported metatomic models (TorchScript ``.pt``, ``mtt export``): PET features only, they
  cannot be trained.
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
    if _is_torchscript(path):  # torch.load would hand it to torch.jit.load
        return _TORCHSCRIPT
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        if "Tried to deserialize class" in str(error):  # metatomic classes in a pickle
            return None
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint: {error}") from error


_TORCHSCRIPT = object()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    return any(name.endswith("constants.pkl") for name in zipfile.ZipFile(path).namelist())


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
        An mlipprobe ``.pt`` checkpoint, a mace-torch ``.model`` file, a metatrain
        ``.ckpt`` checkpoint or an exported metatomic ``.pt`` model (embedding only).
    trusted : bool
        Allow full unpickling (runs code from the file). Needed for mace ``.model`` and
        metatrain ``.ckpt`` files.
    head : str, optional
        Head of a multi-head MACE model.
    dtype : {"float32", "float64"}
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    dtype = resolve_dtype(dtype)
    payload = _read_payload(path)
    if payload is _TORCHSCRIPT:
        from mlipprobe.backbones.pet import load_exported

        backbone = load_exported(path)
    elif payload is None:
        if not trusted:
            raise UntrustedCheckpointError(
                f"{path} is a whole pickled model or checkpoint (a mace-torch .model or a "
                "metatrain .ckpt file); loading it runs code stored in the file. If you trust "
                "its source, load it with backbone.trusted=true (Python: trusted=True)."
            )
        backbone = _load_pickled(path, head, dtype)
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


def _load_pickled(path: Path, head, dtype) -> Backbone:
    """A trusted pickle: a metatrain ``.ckpt`` (by suffix) or a mace-torch ``.model``."""
    metatrain = path.suffix == ".ckpt"
    if metatrain:  # the classes must be importable before unpickling
        from mlipprobe.backbones.pet import PetBackbone, import_metatrain

        import_metatrain()
    else:
        from mlipprobe.backbones.mace import import_mace, load_mace_module

        import_mace()
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path} cannot be unpickled: {error}") from error
    if metatrain:
        if not isinstance(loaded, dict) or "architecture_name" not in loaded:
            raise CheckpointError(f"{path} is not a metatrain checkpoint (no 'architecture_name')")
        return PetBackbone.from_metatrain_checkpoint(loaded, path).to(dtype)
    return load_mace_module(loaded, head, dtype)


def _from_payload(path: Path, payload: dict) -> Backbone:
    kind = payload.get("kind")
    if kind == "mace":
        from mlipprobe.backbones.mace import MaceBackbone

        return MaceBackbone.from_payload(payload)
    if kind == "pet":
        from mlipprobe.backbones.pet import PetBackbone

        return PetBackbone.from_payload(payload)
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
    if kind == "pet":
        from mlipprobe.backbones.pet import PetBackbone

        return PetBackbone.from_hypers(dict(hypers), structures, dtype=resolve_dtype(dtype))
    raise CheckpointError(f"Unknown backbone kind '{kind}' (supported: mace, pet)")
