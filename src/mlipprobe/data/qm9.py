"""QM9 (B3LYP/6-31G(2df,p); 130,831 of its 133,885 molecules) from the PyPI package ``qm9pack``.

qm9pack ships the data set as CSV files; its own API imports ``pkg_resources``, which
recent setuptools no longer has, so we read the files directly.

Units of the ``info`` keys: ``U0``, ``U``, ``H``, ``G``, ``homo``, ``lumo``, ``gap``,
``zpve`` in eV (converted from Hartree); ``mu`` (dipole magnitude) in Debye; ``alpha``
(isotropic polarizability) in bohr^3; ``r2`` in bohr^2; ``Cv`` in cal/(mol K).
``arrays["mulliken"]``: Mulliken charges (e). ``info["qm9_index"]``: the gdb index.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms
from ase.units import Hartree

from mlipprobe.data.readers import DataError

N_MOLECULES = 130_831  # qm9pack omits the 3,054 molecules that failed the QM9 geometry check
HARTREE_COLUMNS = {
    "U0": "InternalEnergy_0K_au",
    "U": "InternalEnergy_298K_au",
    "H": "Enthalphy_298K_au",
    "G": "GibbsFreeEnergy_298K_au",
    "homo": "HOMO_au",
    "lumo": "LUMO_au",
    "gap": "HOMO_LUMO_gap_au",
    "zpve": "ZPVE_au",
}
PLAIN_COLUMNS = {"mu": "Dipole_debye", "alpha": "Polarizability_bohr3", "r2": "R2_bohr2", "Cv": "Heatcapacity_Cv_cal_mol_K"}


def qm9pack_files() -> list[Path]:
    """The CSV parts of the installed qm9pack, in order."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The QM9 source needs the qm9pack package: pip install qm9pack")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return [folder / f"qm9_part{i}.csv" for i in (1, 2, 3)]


def parse_number_list(text: str):
    """Python-style lists such as ``[[0.,1.5],[2*^-6,3]]`` (Mathematica exponents)."""
    return ast.literal_eval(text.replace("*^", "e"))


def row_to_atoms(row: dict) -> Atoms:
    symbols = ast.literal_eval(row["Elements"])
    atoms = Atoms(symbols=symbols, positions=np.array(parse_number_list(row["XYZ_Ang"]), dtype=float))
    atoms.info["qm9_index"] = int(row["Index"])
    atoms.info["smiles"] = row["SMILES"]
    for name, column in HARTREE_COLUMNS.items():
        atoms.info[name] = float(row[column]) * Hartree
    for name, column in PLAIN_COLUMNS.items():
        atoms.info[name] = float(row[column])
    atoms.arrays["mulliken"] = np.array(parse_number_list(row["Mulliken_pop"]), dtype=float)
    return atoms


def _rows() -> Iterable[dict]:
    csv.field_size_limit(sys.maxsize)
    for path in qm9pack_files():
        with open(path, newline="") as handle:
            yield from csv.DictReader(handle)


def read_qm9(indices: Iterable[int] | None = None, limit: int | None = None) -> list[Atoms]:
    """QM9 molecules as ``ase.Atoms`` (non-periodic), in the order of ``indices``.

    Parameters
    ----------
    indices : iterable of int, optional
        Zero-based positions in QM9 (gdb index - 1). Default: all, or the first ``limit``.
    limit : int, optional
        Stop after this many molecules when ``indices`` is not given.
    """
    wanted = None if indices is None else [int(i) for i in indices]
    positions = None if wanted is None else {index: k for k, index in enumerate(wanted)}
    found: dict[int, Atoms] = {}
    for position, row in enumerate(_rows()):
        if positions is None:
            found[position] = row_to_atoms(row)
            if limit is not None and len(found) >= limit:
                break
        elif position in positions:
            found[position] = row_to_atoms(row)
            if len(found) == len(positions):
                break
    if wanted is None:
        return [found[k] for k in sorted(found)]
    missing = [i for i in wanted if i not in found]
    if missing:
        raise DataError(f"QM9 has no molecule at position(s) {missing[:5]} (it has {N_MOLECULES})")
    return [found[i] for i in wanted]
