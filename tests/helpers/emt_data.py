"""A small periodic data set labelled by a real calculator (ASE's EMT)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def make_emt_dataset(path: str | Path, n_structures: int = 24, seed: int = 0) -> Path:
    """Rattled, strained fcc Cu/Au/Ni alloy cells with EMT energy, forces and stress.

    Also writes two per-structure targets: ``volume_per_atom`` (scalar) and
    ``cell_lengths`` (3 components).
    """
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(n_structures):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
        atoms.numbers = rng.choice([28, 29, 79], size=len(atoms), p=[0.3, 0.5, 0.2])
        atoms.set_cell(atoms.cell * (1 + rng.normal(scale=0.02, size=(3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        results = {
            "energy": atoms.get_potential_energy(),
            "forces": atoms.get_forces(),
            "stress": atoms.get_stress(),
        }
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["volume_per_atom"] = atoms.get_volume() / len(atoms)
        atoms.info["cell_lengths"] = atoms.cell.lengths()
        structures.append(atoms)
    path = Path(path)
    ase.io.write(path, structures, format="extxyz")
    return path
