"""Per-atom embeddings of a checkpoint, streamed to HDF5 through Lightning's predict loop.

File layout (one row per atom, in dataset order)::

    features/backbone     (n_atoms, d)   float
    features/last_layer   (n_atoms, d')  float
    features/<extra>      (n_atoms, k)   e.g. layer0_L1, on request
    atomic_numbers        (n_atoms,)     int
    structure_index       (n_atoms,)     int: the structure's position in the data file

Attributes: ``backbone`` (kind), ``checkpoint``, ``checkpoint_sha256``, ``dataset``,
``dataset_sha256``, ``split``, ``strategy``, ``feature_names``, ``mlipprobe_version``.
The file is written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

import mlipprobe
from mlipprobe.backbones.base import FEATURE_KINDS, Backbone
from mlipprobe.data.datamodule import Batch


class EmbeddingModule(L.LightningModule):
    """Wraps a backbone for ``trainer.predict``: each step returns per-atom features."""

    def __init__(self, backbone: Backbone, features: Sequence[str] = FEATURE_KINDS) -> None:
        super().__init__()
        self.backbone = backbone
        self.features = list(features)
        unknown = set(self.features) - set(backbone.feature_names())
        if unknown:
            raise ValueError(
                f"Unknown feature kind(s) {sorted(unknown)} for the {backbone.kind} backbone; "
                f"available: {backbone.feature_names()}"
            )

    def predict_step(self, batch: Batch, batch_idx: int) -> dict:
        output = self.backbone(batch.graph, features=self.features)
        return {
            "features": {kind: output.features[kind].detach() for kind in self.features},
            "atomic_numbers": batch.atomic_numbers,
            "structure_index": torch.repeat_interleave(batch.structure_index, batch.n_atoms),
        }


class HDF5EmbeddingWriter(BasePredictionWriter):
    """Appends each predicted batch to an HDF5 file; memory does not grow with the data."""

    def __init__(self, path: str | Path, attributes: Mapping | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.attributes = dict(attributes or {})
        self._file: h5py.File | None = None
        self._temporary: Path | None = None

    def _open(self, prediction: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent)
        os.close(handle)
        self._temporary = Path(name)
        self._file = h5py.File(self._temporary, "w")
        for kind, values in prediction["features"].items():
            self._file.create_dataset(
                f"features/{kind}", shape=(0, values.shape[1]), maxshape=(None, values.shape[1]),
                dtype=np.float32 if values.dtype == torch.float32 else np.float64,
                chunks=(4096, values.shape[1]),
            )
        for name in ("atomic_numbers", "structure_index"):
            self._file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        attributes = {
            **self.attributes,
            "feature_names": list(prediction["features"]),
            "mlipprobe_version": mlipprobe.__version__,
        }
        for key, value in attributes.items():
            self._file.attrs[key] = "" if value is None else value

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if self._file is None:
            self._open(prediction)
        arrays = {f"features/{k}": v for k, v in prediction["features"].items()}
        arrays["atomic_numbers"] = prediction["atomic_numbers"]
        arrays["structure_index"] = prediction["structure_index"]
        for name, values in arrays.items():
            values = values.cpu().numpy()
            dataset = self._file[name]
            start = dataset.shape[0]
            dataset.resize(start + len(values), axis=0)
            dataset[start:] = values

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._file is None:
            raise RuntimeError(f"No structures were embedded; {self.path} was not written")
        self._file.close()
        os.replace(self._temporary, self.path)
        self._file = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._temporary)


def write_embeddings(
    backbone: Backbone,
    datamodule,
    path: str | Path,
    features: Sequence[str] = FEATURE_KINDS,
    attributes: Mapping | None = None,
    trainer_kwargs: Mapping | None = None,
) -> Path:
    """Embed ``datamodule.embed_split`` with ``backbone`` and write ``path`` (HDF5)."""
    attributes = {
        "backbone": backbone.kind,
        "checkpoint": backbone.source,
        "checkpoint_sha256": backbone.source_sha256,
        "dataset": datamodule.path,
        "dataset_sha256": datamodule.sha256,
        "split": datamodule.embed_split,
        **(attributes or {}),
    }
    writer = HDF5EmbeddingWriter(path, attributes)
    kwargs = dict(logger=False, enable_checkpointing=False, enable_model_summary=False)
    kwargs.update(trainer_kwargs or {})
    kwargs["callbacks"] = [writer]
    trainer = L.Trainer(**kwargs)
    datamodule.attach(backbone)
    trainer.predict(EmbeddingModule(backbone, features), datamodule=datamodule, return_predictions=False)
    return Path(path)


def read_embeddings(path: str | Path, features: Sequence[str] | None = None) -> dict:
    """Load an embedding file: ``{"features": {kind: array}, "atomic_numbers", "structure_index", "attrs"}``."""
    with h5py.File(path, "r") as handle:
        kinds = list(handle["features"]) if features is None else list(features)
        missing = [k for k in kinds if k not in handle["features"]]
        if missing:
            raise KeyError(f"{path} has no feature(s) {missing}; it has {list(handle['features'])}")
        return {
            "features": {k: handle["features"][k][()] for k in kinds},
            "atomic_numbers": handle["atomic_numbers"][()],
            "structure_index": handle["structure_index"][()],
            "attrs": dict(handle.attrs),
        }
