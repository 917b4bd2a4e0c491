"""LightningDataModule: structures from a file, deterministic splits, backbone batches."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from mlipprobe.data.readers import DataError, KeyMap, read_structures
from mlipprobe.data.splits import resolve_splits
from mlipprobe.io import sha256_of_file

SPLITS = ("train", "val", "test")


class EpochShuffler(RandomSampler):
    """A random order that depends only on ``(seed, epoch)``: a run resumed from a checkpoint
    sees the same batches as an uninterrupted one. Lightning calls ``set_epoch`` each epoch,
    and under DDP replaces it by a ``DistributedSampler`` (it is a ``RandomSampler``)."""

    def __init__(self, data_source, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())


@dataclass
class Batch:
    """A backbone graph batch plus labels in mlipprobe's names.

    ``labels["energy"]`` (n_structures,), ``labels["forces"]`` (n_atoms, 3),
    ``labels["stress"]`` (n_structures, 3, 3), per-structure targets (n_structures, d),
    per-atom targets (n_atoms, d). ``atom_to_structure`` maps each atom to its row.
    """

    graph: Any
    labels: dict[str, torch.Tensor]
    n_atoms: torch.Tensor
    atom_to_structure: torch.Tensor
    structure_index: torch.Tensor
    atomic_numbers: torch.Tensor
    meta: dict = field(default_factory=dict)

    def to(self, device):
        return Batch(
            graph=self.graph.to(device),
            labels={k: v.to(device) for k, v in self.labels.items()},
            n_atoms=self.n_atoms.to(device),
            atom_to_structure=self.atom_to_structure.to(device),
            structure_index=self.structure_index.to(device),
            atomic_numbers=self.atomic_numbers.to(device),
        )

    @property
    def num_structures(self) -> int:
        return int(self.n_atoms.shape[0])


def labels_of(atoms, keys: KeyMap, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The labels of one structure that ``keys`` names, as tensors."""
    labels = {}
    if keys.energy is not None:
        labels["energy"] = torch.tensor(atoms.info["energy"], dtype=dtype)
    if keys.forces is not None:
        labels["forces"] = torch.tensor(atoms.arrays["forces"], dtype=dtype)
    if keys.stress is not None:
        labels["stress"] = torch.tensor(np.asarray(atoms.info["stress"]).reshape(3, 3), dtype=dtype)
    for target in keys.targets:
        source = atoms.arrays if target.per_atom else atoms.info
        labels[target.name] = torch.tensor(np.asarray(source[target.name]), dtype=dtype)
    return labels


class StructureDataset(Dataset):
    """Structures converted to backbone graphs lazily, once each."""

    def __init__(self, structures, backbone, keys: KeyMap) -> None:
        self.structures = structures
        self.backbone = backbone
        self.keys = keys
        self._cache: list = [None] * len(structures)

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index: int):
        if self._cache[index] is None:
            atoms = self.structures[index]
            self._cache[index] = (
                self.backbone.atoms_to_graph(atoms),
                labels_of(atoms, self.keys, self.backbone.dtype),
                atoms,
            )
        return self._cache[index]


def collate(backbone, keys: KeyMap, items) -> Batch:
    graphs, labels, structures = zip(*items)
    n_atoms = torch.tensor([len(a) for a in structures])
    per_atom = {"forces"} | {t.name for t in keys.targets if t.per_atom}
    batched = {}
    for name in labels[0]:
        parts = [item[name] for item in labels]
        batched[name] = torch.cat(parts) if name in per_atom else torch.stack(parts)
    return Batch(
        graph=backbone.collate_graphs(graphs),
        labels=batched,
        n_atoms=n_atoms,
        atom_to_structure=torch.repeat_interleave(torch.arange(len(structures)), n_atoms),
        structure_index=torch.tensor([a.info["structure_index"] for a in structures]),
        atomic_numbers=torch.tensor(np.concatenate([a.numbers for a in structures])),
    )


class AtomsDataModule(L.LightningDataModule):
    """Structures from one ASE-readable file, split deterministically.

    Parameters
    ----------
    path : str
        Any file ``ase.io.read`` understands (extxyz first).
    keys : mapping
        Which labels to read and their keys in the file; see ``KeyMap.from_config``.
    splits : mapping
        ``{fractions: {train: 0.8, val: 0.1, test: 0.1}, seed: 0}``,
        ``{ranges: {train: [0.0, 0.8], val: [0.8, 0.9], test: [0.9, 1.0]}, seed: 0}`` (parts of
        one seeded order, so that runs can use disjoint parts) or
        ``{train: idx.txt, val: idx.txt, test: idx.txt}`` (index files).
    batch_size, eval_batch_size : int
    num_workers : int
    embed_split : str
        Split whose per-atom features are written as embeddings (``all`` for every
        structure in the file).
    """

    def __init__(
        self,
        path: str,
        keys: Mapping,
        splits: Mapping,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        embed_split: str = "test",
        limit: int | None = None,
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.keys = KeyMap.from_config(keys)
        self.split_config = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.embed_split = embed_split
        self.limit = limit
        self.structures: list | None = None
        self.split_indices: dict[str, np.ndarray] = {}
        self.backbone = None

    # --- reading --------------------------------------------------------------------
    def load(self) -> "AtomsDataModule":
        """Read the file and make the splits (idempotent)."""
        if self.structures is not None:
            return self
        structures = read_structures(self.path, self.keys)
        if self.limit is not None:
            structures = structures[: self.limit]
        self.split_indices = resolve_splits(len(structures), self.split_config)
        self.structures = structures
        if self.embed_split != "all" and self.embed_split not in self.split_indices:
            raise DataError(
                f"embed_split '{self.embed_split}' is not a split of {self.path} "
                f"(splits: {sorted(self.split_indices)}, or 'all')"
            )
        return self

    def split(self, name: str) -> list:
        self.load()
        if name == "all":
            return list(self.structures)
        if name not in self.split_indices:
            raise DataError(f"Split '{name}' is not defined for {self.path}")
        indices = self.split_indices[name]
        if len(indices) == 0:
            raise DataError(f"Split '{name}' of {self.path} is empty: change the split fractions")
        return [self.structures[i] for i in indices]

    @property
    def sha256(self) -> str:
        return sha256_of_file(self.path)

    # --- backbone ---------------------------------------------------------------------
    def attach(self, backbone) -> "AtomsDataModule":
        """Convert structures with ``backbone``; refuses elements it does not know."""
        self.load()
        backbone.check_elements(self.structures, source=self.path)
        self.backbone = backbone
        self._datasets = {}
        return self

    def dataset(self, name: str) -> StructureDataset:
        if self.backbone is None:
            raise RuntimeError("Call attach(backbone) before asking for data loaders")
        if name not in self._datasets:
            self._datasets[name] = StructureDataset(self.split(name), self.backbone, self.keys)
        return self._datasets[name]

    def _loader(self, name: str, shuffle: bool, batch_size: int) -> DataLoader:
        dataset = self.dataset(name)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffler(dataset, seed=torch.initial_seed() % 2**62) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=functools.partial(collate, self.backbone, self.keys),
        )

    def train_dataloader(self):
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self):
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self):
        return self._loader("test", False, self.eval_batch_size)

    def predict_dataloader(self):
        return self._loader(self.embed_split, False, self.eval_batch_size)
