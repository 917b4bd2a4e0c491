"""Read structures and their labels from any ASE-readable file under canonical names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import ase.io
import numpy as np
from ase import Atoms


class DataError(ValueError):
    """Bad input data: the message names the file, key, structure, element or shape."""


POOLINGS = ("mean", "sum")


@dataclass(frozen=True)
class TargetSpec:
    """A new target read from the data file.

    ``key`` is looked up in ``atoms.info`` (per structure) or ``atoms.arrays``
    (``per_atom=True``). Per-structure targets are pooled from per-atom outputs by
    ``mean`` (intensive, e.g. a gap) or ``sum`` (extensive). ``vector=True`` marks a
    3-vector that rotates with the structure (a dipole), predicted by an equivariant head.
    """

    name: str
    key: str
    per_atom: bool = False
    pooling: str = "mean"
    vector: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise DataError(f"Target '{self.name}': pooling must be one of {POOLINGS}, got '{self.pooling}'")


@dataclass(frozen=True)
class KeyMap:
    """Which labels to read, and under which keys the file stores them (``None``: absent)."""

    energy: str | None = "energy"
    forces: str | None = None
    stress: str | None = None
    targets: tuple[TargetSpec, ...] = ()

    @classmethod
    def from_config(cls, cfg: Mapping | "KeyMap") -> "KeyMap":
        """From ``{energy: U0, forces: null, targets: {gap: {key: gap, pooling: mean}}}``."""
        if isinstance(cfg, KeyMap):
            return cfg
        cfg = dict(cfg)
        targets = cfg.pop("targets", None) or {}
        unknown = set(cfg) - {"energy", "forces", "stress"}
        if unknown:
            raise DataError(f"Unknown data.keys entries {sorted(unknown)}: use energy, forces, stress, targets")
        specs = []
        for name, spec in dict(targets).items():
            spec = dict(spec) if isinstance(spec, Mapping) else {"key": spec}
            spec.setdefault("key", name)
            specs.append(TargetSpec(name=name, **spec))
        return cls(targets=tuple(specs), **cfg)


def _lookup(atoms: Atoms, key: str, per_atom: bool):
    """A label from ``arrays``/``info`` or, where ASE moved it, from the calculator results."""
    source = atoms.arrays if per_atom else atoms.info
    if key in source:
        return source[key]
    if atoms.calc is not None and key in atoms.calc.results:
        return atoms.calc.results[key]
    return None


def _available(atoms: Atoms) -> list[str]:
    keys = set(atoms.info) | set(atoms.arrays) - {"numbers", "positions"}
    if atoms.calc is not None:
        keys |= set(atoms.calc.results)
    return sorted(keys)


def _label(atoms: Atoms, key: str, per_atom: bool, path, index: int) -> np.ndarray:
    value = _lookup(atoms, key, per_atom)
    if value is None:
        where = "atoms.arrays" if per_atom else "atoms.info"
        raise DataError(
            f"Key '{key}' ({where}) is missing in structure {index} of {path}; "
            f"available keys: {_available(atoms)}"
        )
    value = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(value)):
        raise DataError(f"Key '{key}' of structure {index} in {path} holds non-finite values")
    return value


def _stress_3x3(value: np.ndarray, path, index: int) -> np.ndarray:
    if value.shape == (3, 3):
        return value
    if value.shape in ((6,), (9,)):
        from ase.stress import voigt_6_to_full_3x3_stress

        return voigt_6_to_full_3x3_stress(value) if value.shape == (6,) else value.reshape(3, 3)
    raise DataError(f"Stress of structure {index} in {path} has shape {value.shape}; expected (6,) or (3, 3)")


def _normalise(atoms: Atoms, keys: KeyMap, path, index: int) -> Atoms:
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info["structure_index"] = index
    if keys.energy is not None:
        energy = _label(atoms, keys.energy, False, path, index)
        if energy.size != 1:
            raise DataError(f"Energy '{keys.energy}' of structure {index} in {path} has shape {energy.shape}")
        out.info["energy"] = float(energy.reshape(()))
    if keys.forces is not None:
        forces = _label(atoms, keys.forces, True, path, index)
        if forces.shape != (len(atoms), 3):
            raise DataError(f"Forces '{keys.forces}' of structure {index} in {path} have shape {forces.shape}, expected ({len(atoms)}, 3)")
        out.arrays["forces"] = forces
    if keys.stress is not None:
        out.info["stress"] = _stress_3x3(_label(atoms, keys.stress, False, path, index), path, index)
    for target in keys.targets:
        value = _label(atoms, target.key, target.per_atom, path, index)
        if target.per_atom:
            out.arrays[target.name] = value.reshape(len(atoms), -1)
        else:
            out.info[target.name] = np.atleast_1d(value).reshape(-1)
    return out


def _check_target_shapes(structures, keys: KeyMap, path) -> None:
    for target in keys.targets:
        shapes = {}
        for atoms in structures:
            value = atoms.arrays[target.name] if target.per_atom else atoms.info[target.name]
            shapes.setdefault(value.shape[-1], atoms.info["structure_index"])
        if len(shapes) > 1:
            detail = ", ".join(f"{width} components (first in structure {i})" for width, i in shapes.items())
            raise DataError(f"Target '{target.name}' (key '{target.key}') has inconsistent shapes in {path}: {detail}")
        width = next(iter(shapes))
        if target.vector and width != 3:
            raise DataError(f"Target '{target.name}' is marked vector but has {width} components in {path}")


def read_structures(path: str | Path, keys: KeyMap, index: str = ":") -> list[Atoms]:
    """Read ``path`` with ASE and return fresh ``Atoms`` with canonical labels.

    Labels: ``info["energy"]`` (float), ``arrays["forces"]`` (n, 3), ``info["stress"]``
    (3, 3), ``info[target]`` (d,) or ``arrays[target]`` (n, d), and
    ``info["structure_index"]``, the structure's position in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist")
    try:
        raw = ase.io.read(path, index=index)
    except Exception as error:  # ASE raises many types for unparsable files
        raise DataError(f"ASE cannot read {path}: {error}") from error
    raw = raw if isinstance(raw, list) else [raw]
    if not raw:
        raise DataError(f"{path} holds no structures")
    structures = [_normalise(atoms, keys, path, i) for i, atoms in enumerate(raw)]
    _check_target_shapes(structures, keys, path)
    return structures
