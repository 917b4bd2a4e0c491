"""Strategies on a real training loop: what trains, what stays bit-identical."""

from __future__ import annotations

import copy
import functools

import lightning as L
import numpy as np
import pytest
import torch

from mlipprobe.backbones import build_backbone
from mlipprobe.data.datamodule import AtomsDataModule
from mlipprobe.strategies import Strategy, StrategyError
from mlipprobe.training import PotentialModule, head_specs
from tests.conftest import TINY_MACE, TINY_PET
from tests.helpers.emt_data import make_emt_dataset

STRATEGIES = {
    "scratch": Strategy("scratch", ["backbone", "heads", "new_heads"], new_heads=True, reinitialize=True),
    "full": Strategy("full", ["backbone", "heads"]),
    "head": Strategy("head", ["heads"]),
    "transfer_full": Strategy("transfer_full", ["backbone", "new_heads"], new_heads=True),
    "transfer_head": Strategy("transfer_head", ["new_heads"], new_heads=True),
}
ENERGY_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}
TARGET_KEYS = {"energy": None, "targets": {"volume_per_atom": {"key": "volume_per_atom", "pooling": "mean"}}}


@pytest.fixture(scope="module")
def emt_file(tmp_path_factory):
    return make_emt_dataset(tmp_path_factory.mktemp("emt") / "emt.extxyz", n_structures=24, seed=0)


@pytest.fixture(scope="module")
def parent(emt_file):
    datamodule = AtomsDataModule(emt_file, ENERGY_KEYS, {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}})
    return build_backbone(hypers=TINY_MACE, structures=datamodule.split("train"), dtype="float64")


@pytest.fixture(scope="module")
def pet_parent(emt_file):
    datamodule = AtomsDataModule(emt_file, ENERGY_KEYS, {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}})
    return build_backbone(kind="pet", hypers=TINY_PET, structures=datamodule.split("train"), dtype="float64")


def datamodule_for(path, keys, batch_size=4):
    splits = {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": 0}
    return AtomsDataModule(path, keys, splits, batch_size=batch_size).load()


def fit(backbone, strategy, datamodule, epochs=2, seed=0, prepare=True):
    L.seed_everything(seed)
    if prepare:
        strategy.prepare(backbone, head_specs(datamodule.keys, datamodule.split("train")), seed=seed)
    module = PotentialModule(
        backbone, datamodule.keys, strategy, optimizer=functools.partial(torch.optim.Adam, lr=1e-2)
    )
    module.normalize_new_heads(datamodule.split("train"))
    datamodule.attach(backbone)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


def snapshot(backbone):
    return {group: {n: p.detach().clone() for n, p in params} for group, params in backbone.parameter_groups().items()}


def changed(before, after, group):
    return {n for n, p in after[group].items() if n in before[group] and not torch.equal(p, before[group][n])}


@pytest.mark.parametrize("kind", ["mace", "pet"])
@pytest.mark.parametrize(
    ("name", "keys", "frozen", "trained"),
    [
        ("full", ENERGY_KEYS, [], ["backbone", "heads"]),
        ("head", ENERGY_KEYS, ["backbone"], ["heads"]),
        ("transfer_full", TARGET_KEYS, ["heads"], ["backbone", "new_heads"]),
        ("transfer_head", TARGET_KEYS, ["backbone", "heads"], ["new_heads"]),
    ],
)
def test_frozen_groups_stay_bit_identical_and_trained_groups_move(request, emt_file, kind, name, keys, frozen, trained):
    backbone = copy.deepcopy(request.getfixturevalue("parent" if kind == "mace" else "pet_parent"))
    datamodule = datamodule_for(emt_file, keys)
    strategy = STRATEGIES[name]
    strategy.prepare(backbone, head_specs(datamodule.keys, datamodule.split("train")))
    before = snapshot(backbone)
    buffers = {k: v.clone() for k, v in backbone.named_buffers() if "new_heads" not in k}
    fit(backbone, strategy, datamodule, epochs=1 if kind == "pet" else 2, prepare=False)
    after = snapshot(backbone)
    for group in frozen:
        assert not changed(before, after, group), f"{name}: {group} moved"
        assert all(not p.requires_grad for p in after[group].values())
    for group in trained:
        assert changed(before, after, group), f"{name}: {group} did not train"
    for key, value in backbone.named_buffers():  # statistics (E0s, PET's composition and scaler) are not trained
        if key in buffers:
            assert torch.equal(value, buffers[key]), key


def test_scratch_reinitializes_every_weight(parent, emt_file):
    backbone = copy.deepcopy(parent)
    datamodule = datamodule_for(emt_file, ENERGY_KEYS)
    before = snapshot(parent)
    STRATEGIES["scratch"].prepare(backbone, [], seed=3)
    after = snapshot(backbone)
    for group in ("backbone", "heads"):
        moved = changed(before, after, group)
        same = {n for n, p in after[group].items() if p.numel() > 1} - moved
        assert not same, f"not re-initialised: {sorted(same)[:3]}"
    fit(backbone, STRATEGIES["scratch"], datamodule, epochs=1)


def test_energy_only_strategy_refuses_new_targets(parent, emt_file):
    datamodule = datamodule_for(emt_file, TARGET_KEYS)
    with pytest.raises(StrategyError, match=r"new target\(s\) \['volume_per_atom'\]: use strategy=transfer_full"):
        STRATEGIES["full"].prepare(copy.deepcopy(parent), head_specs(datamodule.keys, datamodule.split("train")))


def test_learning_rate_multipliers_per_group(parent):
    backbone = copy.deepcopy(parent)
    strategy = Strategy("full", ["backbone", "heads"], lr_multipliers={"backbone": 0.1})
    strategy.prepare(backbone, [])
    groups = {g["name"]: g for g in strategy.optimizer_groups(backbone, lr=1e-3)}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4) and groups["heads"]["lr"] == pytest.approx(1e-3)
    with pytest.raises(StrategyError, match="unknown parameter group"):
        Strategy("bad", ["encoder"])


def test_forces_and_stress_are_trained_and_validated(parent, emt_file):
    datamodule = datamodule_for(emt_file, ENERGY_KEYS)
    _, trainer = fit(copy.deepcopy(parent), STRATEGIES["full"], datamodule, epochs=1)
    for key in ("val/energy_per_atom_mae", "val/forces_rmse", "val/stress_mae", "train/loss", "train/forces_mae"):
        assert np.isfinite(float(trainer.callback_metrics[key])), key


def test_validation_metrics_do_not_depend_on_batch_size(parent, emt_file):
    results = []
    for batch_size in (2, 5):
        datamodule = datamodule_for(emt_file, ENERGY_KEYS, batch_size=batch_size)
        backbone = copy.deepcopy(parent)
        STRATEGIES["full"].prepare(backbone, [])
        module = PotentialModule(backbone, datamodule.keys, STRATEGIES["full"], functools.partial(torch.optim.Adam))
        datamodule.attach(backbone)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, inference_mode=False)
        results.append(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
    for key in ("val/energy_per_atom_mae", "val/forces_mae", "val/forces_rmse"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-9), key


def test_non_finite_loss_stops_the_run_with_a_message(parent, emt_file):
    backbone = copy.deepcopy(parent)
    backbone.model.scale_shift.scale.fill_(float("inf"))  # a diverged model
    datamodule = datamodule_for(emt_file, ENERGY_KEYS)
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at epoch 0.*energy_per_atom="):
        fit(backbone, STRATEGIES["full"], datamodule, epochs=1)


@pytest.fixture(scope="module")
def qm9_with_vector_targets(tmp_path_factory):
    """30 QM9 molecules with a real equivariant target: the Mulliken-charge dipole."""
    import ase.io

    from mlipprobe.data.qm9 import read_qm9

    molecules = read_qm9(range(100, 130))
    for atoms in molecules:
        centred = atoms.positions - atoms.get_center_of_mass()
        atoms.info["charge_dipole"] = atoms.arrays["mulliken"] @ centred
        del atoms.info["smiles"]
    path = tmp_path_factory.mktemp("qm9") / "qm9_vectors.extxyz"
    ase.io.write(path, molecules)
    return path


@pytest.mark.parametrize(
    "target",
    [
        {"charge_dipole": {"key": "charge_dipole", "pooling": "sum", "vector": True}},
        {"charges": {"key": "mulliken", "per_atom": True}},
        {"zpve": {"key": "zpve", "pooling": "sum"}, "gap": {"key": "gap", "pooling": "mean"}},
    ],
    ids=["vector", "per_atom", "extensive+intensive"],
)
def test_new_targets_of_every_kind_train(qm9_with_vector_targets, target):
    datamodule = datamodule_for(qm9_with_vector_targets, {"energy": None, "targets": target})
    backbone = build_backbone(hypers=TINY_MACE, structures=datamodule.split("train"), dtype="float64")
    _, trainer = fit(backbone, STRATEGIES["transfer_full"], datamodule, epochs=1)
    for name in target:
        assert np.isfinite(float(trainer.callback_metrics[f"val/{name}_mae"]))
    if "charge_dipole" in target:
        atoms = datamodule.split("val")[0]
        rotated = atoms.copy()
        rotated.rotate(90, "z", center="COM")
        out = [backbone(backbone.collate_graphs([backbone.atoms_to_graph(a)])).heads["charge_dipole"].sum(0) for a in (atoms, rotated)]
        turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        torch.testing.assert_close(turn @ out[0], out[1], atol=1e-8, rtol=0)
