"""Deterministic train/val/test splits: seeded fractions or index files."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from mlipprobe.data.readers import DataError


def split_indices(n: int, fractions: Mapping[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into consecutive parts.

    Sizes are ``round(fraction * n)``; the rounding remainder goes to ``train``.
    """
    fractions = {name: float(f) for name, f in fractions.items()}
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) > 1 + 1e-9:
        raise DataError(f"Split fractions {fractions} must be >= 0 and sum to at most 1")
    sizes = {name: int(round(f * n)) for name, f in fractions.items()}
    if "train" in sizes:
        sizes["train"] += min(n, int(round(sum(fractions.values()) * n))) - sum(sizes.values())
    order = np.random.default_rng(seed).permutation(n)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = np.sort(order[start : start + size])
        start += size
    return splits


def read_index_file(path: str | Path) -> np.ndarray:
    """Integers separated by white space (one per line, typically)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Index file {path} does not exist")
    try:
        return np.array([int(token) for token in path.read_text().split()], dtype=int)
    except ValueError as error:
        raise DataError(f"Index file {path} must hold integers only: {error}") from error


def split_ranges(n: int, ranges: Mapping[str, tuple[float, float]], seed: int = 0) -> dict[str, np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and give split ``name`` the part between fractions
    ``start`` and ``end`` of the order. With the same seed, ``{train: [0.8, 0.9]}`` of one run
    and ``{test: [0.9, 1.0]}`` of another never share a structure."""
    order = np.random.default_rng(seed).permutation(n)
    splits = {}
    for name, bounds in ranges.items():
        start, end = (float(b) for b in bounds)
        if not 0 <= start <= end <= 1:
            raise DataError(f"Split range {name}: [{start}, {end}] must satisfy 0 <= start <= end <= 1")
        splits[name] = np.sort(order[int(round(start * n)) : int(round(end * n))])
    return splits


def resolve_splits(n: int, cfg: Mapping) -> dict[str, np.ndarray]:
    """``{fractions: {...}, seed: 0}``, ``{ranges: {name: [start, end]}, seed: 0}`` or
    ``{split_name: index_file}``, validated."""
    cfg = dict(cfg)
    if cfg.get("ranges"):
        splits = split_ranges(n, dict(cfg["ranges"]), int(cfg.get("seed", 0)))
    elif cfg.get("fractions"):
        splits = split_indices(n, dict(cfg["fractions"]), int(cfg.get("seed", 0)))
    else:
        splits = {name: read_index_file(path) for name, path in cfg.items() if name not in ("fractions", "ranges", "seed")}
    seen: dict[int, str] = {}
    for name, indices in splits.items():
        bad = indices[(indices < 0) | (indices >= n)]
        if len(bad):
            raise DataError(f"Split '{name}' has index {bad[0]} outside the data's {n} structures")
        for index in indices.tolist():
            if index in seen:
                raise DataError(f"Index {index} is in both split '{seen[index]}' and split '{name}'")
            seen[index] = name
    return splits
