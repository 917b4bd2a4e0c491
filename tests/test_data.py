"""Readers, splits and the QM9 source on real files."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.units import Hartree

from mlipprobe.data.qm9 import qm9pack_files, read_qm9
from mlipprobe.data.readers import DataError, KeyMap, read_structures
from mlipprobe.data.splits import read_index_file, resolve_splits, split_indices
from tests.helpers.emt_data import make_emt_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "qm9_demo.extxyz"


@pytest.fixture(scope="module")
def emt_file(tmp_path_factory):
    return make_emt_dataset(tmp_path_factory.mktemp("emt") / "emt.extxyz", n_structures=6)


def test_extxyz_labels_come_back_under_canonical_names(emt_file):
    keys = KeyMap.from_config(
        {"energy": "energy", "forces": "forces", "stress": "stress",
         "targets": {"v": {"key": "volume_per_atom", "pooling": "sum"}, "lengths": {"key": "cell_lengths"}}}
    )
    structures = read_structures(emt_file, keys)
    raw = ase.io.read(emt_file, ":")
    assert len(structures) == 6 and all(a.pbc.all() for a in structures)
    for index, (ours, theirs) in enumerate(zip(structures, raw)):
        assert ours.info["structure_index"] == index
        assert ours.info["energy"] == theirs.get_potential_energy()
        np.testing.assert_array_equal(ours.arrays["forces"], theirs.get_forces())
        np.testing.assert_allclose(ours.info["stress"], theirs.get_stress(voigt=False))
        assert ours.info["v"].shape == (1,) and ours.info["lengths"].shape == (3,)


def test_missing_key_names_key_file_and_structure(emt_file):
    with pytest.raises(DataError, match=r"Key 'REF_energy' \(atoms.info\) is missing in structure 0 of .*emt.extxyz; available keys: .*energy"):
        read_structures(emt_file, KeyMap(energy="REF_energy"))


def test_inconsistent_target_shapes_are_refused(tmp_path):
    structures = [ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]]) for _ in range(3)]
    for i, atoms in enumerate(structures):
        atoms.info["dipole"] = np.zeros(3 if i else 2)
    path = tmp_path / "bad.extxyz"
    ase.io.write(path, structures)
    keys = KeyMap(energy=None, targets=KeyMap.from_config({"targets": {"dipole": {"key": "dipole"}}}).targets)
    with pytest.raises(DataError, match=r"Target 'dipole' .* inconsistent shapes .*2 components \(first in structure 0\), 3 components \(first in structure 1\)"):
        read_structures(path, keys)


def test_unreadable_file_and_bad_pooling(tmp_path):
    bad = tmp_path / "notes.xyz"
    bad.write_text("this is not\nan xyz file\n")
    with pytest.raises(DataError, match="notes.xyz"):
        read_structures(bad, KeyMap())
    with pytest.raises(DataError, match="pooling must be one of"):
        KeyMap.from_config({"targets": {"gap": {"key": "gap", "pooling": "max"}}})


def test_splits_are_deterministic_disjoint_and_cover():
    a = split_indices(103, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    b = split_indices(103, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    together = np.concatenate(list(a.values()))
    assert len(together) == 103 and len(np.unique(together)) == 103
    assert len(a["val"]) == len(a["test"]) == 10
    with pytest.raises(DataError, match="sum to at most 1"):
        split_indices(10, {"train": 0.9, "test": 0.2})


def test_index_file_splits_are_validated(tmp_path):
    (tmp_path / "train.txt").write_text("0\n1\n2\n")
    (tmp_path / "test.txt").write_text("2 3")
    with pytest.raises(DataError, match="Index 2 is in both split 'train' and split 'test'"):
        resolve_splits(5, {"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"})
    (tmp_path / "test.txt").write_text("3 9")
    with pytest.raises(DataError, match="Split 'test' has index 9 outside the data's 5 structures"):
        resolve_splits(5, {"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"})
    (tmp_path / "test.txt").write_text("3 x")
    with pytest.raises(DataError, match="must hold integers"):
        read_index_file(tmp_path / "test.txt")


def test_qm9_units_against_the_raw_csv():
    import csv
    import sys

    csv.field_size_limit(sys.maxsize)
    with open(qm9pack_files()[0], newline="") as handle:
        rows = [row for _, row in zip(range(3), csv.DictReader(handle))]
    molecules = read_qm9([0, 2])
    assert molecules[0].get_chemical_formula() == "CH4" and molecules[1].get_chemical_formula() == "H2O"
    assert molecules[1].info["gap"] == pytest.approx(float(rows[2]["HOMO_LUMO_gap_au"]) * Hartree)
    assert molecules[0].info["U0"] == pytest.approx(-40.47893 * Hartree)
    assert molecules[1].arrays["mulliken"].shape == (3,)


def test_demo_file_is_what_the_recipe_describes():
    structures = read_structures(DEMO, KeyMap.from_config({"energy": "U0", "targets": {"gap": {"key": "gap"}}}))
    assert len(structures) == 1000
    assert set(np.concatenate([a.numbers for a in structures])) <= {1, 6, 7, 8, 9}
    gaps = np.array([a.info["gap"][0] for a in structures])
    assert 1 < gaps.min() and gaps.max() < 20
    assert all(a.info["energy"] < -1000 for a in structures)
    assert not any(a.pbc.any() for a in structures)
