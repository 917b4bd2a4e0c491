"""Collect embedding files, check they describe the same atoms, and compare them pairwise."""

from __future__ import annotations

import glob
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np

log = logging.getLogger(__name__)


class EmbeddingMismatchError(ValueError):
    """Embedding files that do not describe the same atoms in the same order."""


@dataclass
class EmbeddingSet:
    """One checkpoint's embedding file: label, attributes and lazily loaded features."""

    label: str
    path: Path
    attrs: dict
    _cache: dict = field(default_factory=dict, repr=False)

    def features(self, kind: str) -> np.ndarray:
        if kind not in self._cache:
            with h5py.File(self.path, "r") as handle:
                if kind not in handle["features"]:
                    raise KeyError(f"{self.path} has no feature '{kind}'; it has {sorted(handle['features'])}")
                self._cache[kind] = handle["features"][kind][()].astype(np.float64)
        return self._cache[kind]

    def atoms(self) -> tuple[np.ndarray, np.ndarray]:
        with h5py.File(self.path, "r") as handle:
            return handle["structure_index"][()], handle["atomic_numbers"][()]


def find_embedding_files(inputs: str | Sequence[str]) -> list[Path]:
    """Embedding files from a folder (searched recursively), a glob, or a list of either."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths: list[Path] = []
    for item in items:
        item = str(item)
        if Path(item).is_dir():
            paths += sorted(Path(item).glob("**/embeddings/*.h5")) or sorted(Path(item).glob("**/*.h5"))
        else:
            matches = sorted(Path(p) for p in glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"No embedding file matches '{item}'")
            paths += matches
    if not paths:
        raise FileNotFoundError(f"No embedding files (*.h5) found in {items}")
    return paths


def _label(attrs: dict, path: Path) -> str:
    if attrs.get("role") == "parent" or not attrs.get("strategy"):
        return Path(str(attrs.get("checkpoint", path.stem))).stem
    return str(attrs["strategy"])


def load_embedding_sets(paths: Sequence[Path]) -> list[EmbeddingSet]:
    """One entry per distinct checkpoint (files of the same checkpoint are read once)."""
    sets: dict[str, EmbeddingSet] = {}
    for path in paths:
        with h5py.File(path, "r") as handle:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in handle.attrs.items()}
        key = str(attrs.get("checkpoint_sha256") or path)
        if key in sets:
            continue
        label = _label(attrs, path)
        taken = {s.label for s in sets.values()}
        if label in taken:
            label = f"{label} ({path.parent.parent.name})"
        sets[key] = EmbeddingSet(label=label, path=Path(path), attrs=attrs)
    entries = list(sets.values())
    if len({entry.attrs.get("backbone") for entry in entries}) > 1:  # e.g. "pet full" vs "mace full"
        for entry in entries:
            if entry.attrs.get("role") != "parent" and entry.attrs.get("strategy"):
                entry.label = f"{entry.attrs.get('backbone')} {entry.attrs['strategy']}"
    return entries


def check_same_atoms(sets: Sequence[EmbeddingSet]) -> tuple[np.ndarray, np.ndarray]:
    """Refuse files whose structure indices or atomic numbers differ; return them."""
    reference = sets[0]
    structure_index, numbers = reference.atoms()
    for other in sets[1:]:
        other_index, other_numbers = other.atoms()
        for name, a, b in (("structure_index", structure_index, other_index), ("atomic_numbers", numbers, other_numbers)):
            if a.shape != b.shape:
                raise EmbeddingMismatchError(
                    f"{other.path} has {len(b)} atoms but {reference.path} has {len(a)}: "
                    "embed the same data split with every checkpoint"
                )
            if not np.array_equal(a, b):
                row = int(np.flatnonzero(a != b)[0])
                raise EmbeddingMismatchError(
                    f"{other.path} and {reference.path} differ in {name} at row {row} "
                    f"({b[row]} vs {a[row]}): they do not describe the same atoms"
                )
    return structure_index, numbers


def atom_subset(n_atoms: int, max_atoms: int, seed: int) -> np.ndarray | None:
    """Sorted rows of a seeded random subset of ``max_atoms`` atoms; None (all) when there
    are no more atoms than that."""
    if n_atoms <= max_atoms:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_atoms, max_atoms, replace=False))


def pair_values(
    sets: Sequence[EmbeddingSet],
    kind: str,
    measure: Callable[[np.ndarray, np.ndarray], Any],
    rows: np.ndarray | None = None,
) -> list[list[Any]]:
    """``values[i][j] = measure(X_i, X_j)``: how well checkpoint i's features reconstruct j's.

    Diagonal entries are computed too (they should be ~0 and check the measure).
    Checkpoints whose features are identical (a frozen backbone shared by the parent and
    its head-trained children) are measured once, and share their values.
    """
    features = [s.features(kind) if rows is None else s.features(kind)[rows] for s in sets]
    first_with: dict[bytes, int] = {}
    same_as = [first_with.setdefault(hashlib.sha256(np.ascontiguousarray(x).tobytes()).digest(), i)
               for i, x in enumerate(features)]
    distinct = sorted(set(same_as))
    values = {(i, j): measure(features[i], features[j]) for i in distinct for j in distinct}
    return [[values[same_as[i], same_as[j]] for j in range(len(sets))] for i in range(len(sets))]
