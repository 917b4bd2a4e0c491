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

Under DDP each rank writes the structures its sampler gave it to a part of its own; after a
barrier rank 0 merges the parts into the same layout (each structure once, in dataset order;
a sampler that pads repeats structures) and removes them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
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
from mlipprobe.io import atomic_path

INDEX_DATASETS = ("atomic_numbers", "structure_index")


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


def _create_datasets(handle: h5py.File, features: Mapping[str, tuple[int, type]]) -> None:
    """Empty, growable datasets; ``features`` maps each kind to its (width, dtype)."""
    for kind, (width, dtype) in features.items():
        handle.create_dataset(
            f"features/{kind}", shape=(0, width), maxshape=(None, width), dtype=dtype, chunks=(4096, width)
        )
    for name in INDEX_DATASETS:
        handle.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))


def _append(dataset: h5py.Dataset, values: np.ndarray) -> None:
    start = dataset.shape[0]
    dataset.resize(start + len(values), axis=0)
    dataset[start:] = values


class HDF5EmbeddingWriter(BasePredictionWriter):
    """Appends each predicted batch to an HDF5 file; memory does not grow with the data.

    Parameters
    ----------
    path : path
        The embedding file.
    attributes : mapping, optional
        File attributes.
    structure_order : sequence of int, optional
        Structure indices in dataset order: the row order of a file merged from DDP ranks
        (default: increasing structure index). Every one of them must have been embedded.
    """

    def __init__(
        self, path: str | Path, attributes: Mapping | None = None, structure_order: Sequence[int] | None = None
    ) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.attributes = dict(attributes or {})
        self.structure_order = None if structure_order is None else [int(i) for i in structure_order]
        self.token = uuid.uuid4().hex[:12]  # names this run's DDP parts; rank 0's is broadcast
        self.distributed = False
        self._file: h5py.File | None = None
        self._temporary: Path | None = None

    def part_path(self, rank: int) -> Path:
        return self.path.parent / f".{self.path.name}.{self.token}.rank{rank}.partial"

    def remove_parts(self) -> None:
        for part in self.path.parent.glob(f".{self.path.name}.{self.token}.rank*.partial"):
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    def on_predict_start(self, trainer, pl_module) -> None:
        self.distributed = trainer.world_size > 1
        if self.distributed:
            self.token = trainer.strategy.broadcast(self.token)

    def _open(self, prediction: dict, rank: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.distributed:
            self._temporary = self.part_path(rank)
        else:
            handle, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent)
            os.close(handle)
            self._temporary = Path(name)
        self._file = h5py.File(self._temporary, "w")
        features = prediction["features"]
        _create_datasets(self._file, {
            kind: (values.shape[1], np.float32 if values.dtype == torch.float32 else np.float64)
            for kind, values in features.items()
        })
        attributes = {
            **self.attributes,
            "feature_names": list(features),
            "mlipprobe_version": mlipprobe.__version__,
        }
        for key, value in attributes.items():
            self._file.attrs[key] = "" if value is None else value

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if self._file is None:
            self._open(prediction, trainer.global_rank)
        arrays = {f"features/{k}": v for k, v in prediction["features"].items()}
        arrays.update({name: prediction[name] for name in INDEX_DATASETS})
        for name, values in arrays.items():
            _append(self._file[name], values.cpu().numpy())

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.distributed:
            self._merge_ranks(trainer)
            return
        if self._file is None:
            raise RuntimeError(f"No structures were embedded; {self.path} was not written")
        self._file.close()
        os.replace(self._temporary, self.path)
        self._file = None

    def _merge_ranks(self, trainer) -> None:
        """Every rank closes its part; rank 0 merges them while the others wait."""
        if self._file is not None:
            self._file.close()
            self._file = None
        trainer.strategy.barrier("embedding_parts_written")
        if trainer.is_global_zero:
            parts = [p for p in map(self.part_path, range(trainer.world_size)) if p.is_file()]
            try:
                merge_parts(parts, self.path, self.structure_order)
            finally:
                self.remove_parts()
        trainer.strategy.barrier("embeddings_merged")

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._temporary)


def merged_rows(structure_index: Sequence[np.ndarray], structure_order: Sequence[int] | None = None) -> np.ndarray:
    """Rows of the concatenated parts that make one file: each structure once, from the
    first part that holds it, in ``structure_order`` (default: increasing index), atoms in
    their written order.

    Parameters
    ----------
    structure_index : list of (n_rows_p,) int arrays
        Per-atom structure index of each part; a part holds a structure at most once.
    structure_order : sequence of int, optional
        Every structure expected, in output order.

    Returns
    -------
    (n_atoms,) int array of row numbers into ``np.concatenate(structure_index)``.
    """
    structure = np.concatenate(structure_index)
    part = np.repeat(np.arange(len(structure_index)), [len(s) for s in structure_index])
    present = np.unique(structure)
    expected = present if structure_order is None else np.asarray(structure_order, dtype=np.int64)
    missing = np.setdiff1d(expected, present)
    unexpected = np.setdiff1d(present, expected)
    if len(missing) or len(unexpected):
        raise RuntimeError(
            f"The DDP ranks embedded the wrong structures: missing {missing[:10].tolist()}, "
            f"unexpected {unexpected[:10].tolist()}"
        )
    first_part = np.full(int(structure.max()) + 1, len(structure_index))
    np.minimum.at(first_part, structure, part)
    rows = np.flatnonzero(part == first_part[structure])
    position = np.empty(int(structure.max()) + 1, dtype=np.int64)
    position[expected] = np.arange(len(expected))
    return rows[np.argsort(position[structure[rows]], kind="stable")]


def merge_parts(parts: Sequence[Path], path: Path, structure_order: Sequence[int] | None = None) -> Path:
    """Write the DDP ranks' parts as one embedding file (``merged_rows``), atomically; one
    dataset of all parts (a feature kind of every atom) is in memory at a time."""
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(h5py.File(part, "r")) for part in parts]
        if not handles:
            raise RuntimeError(f"No structures were embedded; {path} was not written")
        rows = merged_rows([h["structure_index"][()] for h in handles], structure_order)
        first = handles[0]
        features = {kind: first[f"features/{kind}"] for kind in first.attrs["feature_names"]}
        with atomic_path(path) as temporary, h5py.File(temporary, "w") as merged:
            _create_datasets(merged, {kind: (data.shape[1], data.dtype) for kind, data in features.items()})
            for key, value in first.attrs.items():
                merged.attrs[key] = value
            for name in [*(f"features/{kind}" for kind in features), *INDEX_DATASETS]:
                _append(merged[name], np.concatenate([h[name][()] for h in handles])[rows])
    return Path(path)


def write_embeddings(
    backbone: Backbone,
    datamodule,
    path: str | Path,
    features: Sequence[str] = FEATURE_KINDS,
    attributes: Mapping | None = None,
    trainer_kwargs: Mapping | None = None,
) -> Path:
    """Embed ``datamodule.embed_split`` with ``backbone`` and write ``path`` (HDF5).

    ``trainer_kwargs`` may make the predict loop distributed (``strategy``, ``devices``): the
    file is then the same as with one process.
    """
    attributes = {
        "backbone": backbone.kind,
        "checkpoint": backbone.source,
        "checkpoint_sha256": backbone.source_sha256,
        "dataset": datamodule.path,
        "dataset_sha256": datamodule.sha256,
        "split": datamodule.embed_split,
        **(attributes or {}),
    }
    order = [atoms.info["structure_index"] for atoms in datamodule.split(datamodule.embed_split)]
    writer = HDF5EmbeddingWriter(path, attributes, structure_order=order)
    kwargs = dict(logger=False, enable_checkpointing=False, enable_model_summary=False)
    kwargs.update(trainer_kwargs or {})
    kwargs["callbacks"] = [writer]
    trainer = L.Trainer(**kwargs)
    datamodule.attach(backbone)
    try:
        trainer.predict(EmbeddingModule(backbone, features), datamodule=datamodule, return_predictions=False)
    except BaseException:
        writer.remove_parts()  # spawned ranks that died leave theirs behind
        raise
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
