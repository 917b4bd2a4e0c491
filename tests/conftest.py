"""Shared fixtures: tiny real models and data made with real calculators."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLIPPROBE_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")

TINY_MACE = dict(
    r_max=4.0,
    num_bessel=4,
    num_polynomial_cutoff=5,
    max_ell=2,
    num_interactions=2,
    hidden_irreps="8x0e+8x1o",
    MLP_irreps="8x0e",
    correlation=2,
    radial_MLP=[16, 16],
)
TINY_PET = dict(cutoff=4.0, d_pet=16, d_head=16, d_node=32, d_feedforward=32, num_heads=2,
                num_attention_layers=1, num_gnn_layers=2)


@pytest.fixture(scope="session")
def molecules():
    """Small organic molecules with a made-up but smooth energy label."""
    names = ["CH3CH2OH", "H2O", "CH4", "HCOOH", "C6H6", "CH3CN", "NH3", "CH3OH"]
    structures = [molecule(name) for name in names]
    for index, atoms in enumerate(structures):
        atoms.info["energy"] = -5.0 * len(atoms) + 0.1 * index
        atoms.info["structure_index"] = index
    return structures


@pytest.fixture(scope="session")
def periodic_cells():
    rng = np.random.default_rng(0)
    cells = []
    for index, a in enumerate([3.55, 3.6, 3.65]):
        atoms = bulk("Cu", "fcc", a=a, cubic=True) * (2, 1, 1)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["structure_index"] = index
        cells.append(atoms)
    return cells


@pytest.fixture(scope="session")
def tiny_mace(molecules):
    """A tiny MACE (float64) built from hyperparameters on the molecules."""
    from mlipprobe.backbones import build_backbone

    return build_backbone(hypers=TINY_MACE, structures=molecules, dtype="float64")


@pytest.fixture(scope="session")
def tiny_mace_files(tiny_mace, tmp_path_factory):
    """The tiny MACE saved as an mlipprobe checkpoint and exported as a mace .model."""
    folder = tmp_path_factory.mktemp("tiny_mace")
    return tiny_mace.save(folder / "tiny.pt"), tiny_mace.export(folder / "tiny.model")


def mace_calculator(path, dtype="float64"):
    """mace's own calculator (it unpickles the .model file: our own test file, trusted);
    the weights-only switch it needs is restored afterwards."""
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    from mace.calculators import MACECalculator

    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        calculator = MACECalculator(model_paths=str(path), device="cpu", default_dtype=dtype)
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous
    return calculator
