"""The ``lora`` strategy on real training: adapters start at zero, only they train, merging
them leaves a plain model with the same predictions, and the entry point saves that.

Every test takes the ``backbone`` fixture, parametrised over ``BACKBONES``: a new backbone
kind joins by adding its demo parent (checkpoint + Hydra overrides) there.
"""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from mlipprobe import load_backbone
from mlipprobe.backbones.base import Backbone
from mlipprobe.data.datamodule import AtomsDataModule
from mlipprobe.strategies import Strategy, StrategyError
from mlipprobe.tasks import train
from mlipprobe.training import PotentialModule

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {
    "mace": {"checkpoint": ROOT / "checkpoints" / "demo_mace_parent.pt", "overrides": ["backbone=demo_mace"]},
    "pet": {"checkpoint": ROOT / "checkpoints" / "demo_pet_parent.ckpt", "overrides": ["backbone=demo_pet"]},
}
LORA = Strategy("lora", ["lora"], lora_rank=4, lora_alpha=8.0)
SMALL = ["data.limit=40", "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false", "trainer=cpu"]


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone_kind(request):
    return request.param


@pytest.fixture(scope="module")
def parent(backbone_kind):
    """The demo parent of this kind in float64 (exact comparisons), in eval mode."""
    # the demo parents are made by this repository's recipes: trusted (the PET one is a metatrain .ckpt)
    return load_backbone(BACKBONES[backbone_kind]["checkpoint"], trusted=True, dtype="float64").eval()


@pytest.fixture(scope="module")
def molecules():
    import ase.io

    return ase.io.read(ROOT / "data" / "qm9_demo.extxyz", index=":6")


def predict(backbone: Backbone, structures) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies (n_structures,) and forces (n_atoms, 3) of ``structures``."""
    graph = backbone.collate_graphs([backbone.atoms_to_graph(atoms) for atoms in structures])
    output = backbone(graph, compute_forces=True)
    return output.energy.detach(), output.forces.detach()


def lora_parameters(backbone: Backbone) -> dict[str, torch.Tensor]:
    return dict(backbone.parameter_groups()["lora"])


def other_parameters(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {n: p for g, ps in backbone.parameter_groups().items() if g != "lora" for n, p in ps}


def randomize_adapters(backbone: Backbone, scale: float = 0.05, seed: int = 1) -> None:
    """Move every adapter weight away from its initial value (as training would, but more)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in lora_parameters(backbone).values():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(scale * noise)


@pytest.fixture(scope="module")
def trained(parent):
    """The parent after ``strategy=lora`` training (2 epochs, energies of 24 molecules);
    returns the backbone and a snapshot of its parameters right after ``prepare``."""
    backbone = copy.deepcopy(parent).train()
    datamodule = AtomsDataModule(
        ROOT / "data" / "qm9_demo.extxyz", {"energy": "G"},
        {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": 0}, batch_size=4, limit=24,
    ).load()
    L.seed_everything(0)
    LORA.prepare(backbone, [])
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    module = PotentialModule(backbone, datamodule.keys, LORA, optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    datamodule.attach(backbone)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return backbone.eval(), before


def test_adapters_start_at_zero_and_leave_predictions_unchanged(parent, molecules):
    adapted = copy.deepcopy(parent)
    adapted.add_lora(rank=4, alpha=8.0)
    assert lora_parameters(adapted), "no adapter parameters reported under 'lora'"
    n_other = sum(p.numel() for p in other_parameters(adapted).values())
    assert n_other == sum(p.numel() for p in parent.parameters())
    for ours, theirs in zip(predict(adapted, molecules), predict(parent, molecules)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def test_only_adapters_train_and_every_other_weight_stays_bit_identical(trained):
    backbone, before = trained
    adapters, others = lora_parameters(backbone), other_parameters(backbone)
    moved = [n for n, p in others.items() if not torch.equal(p, before[n])]
    assert not moved, f"frozen weights moved: {moved[:3]}"
    assert all(not p.requires_grad for p in others.values())
    still = [n for n, p in adapters.items() if torch.equal(p, before[n])]
    assert not still, f"adapter weights did not train: {still[:3]}"


def test_merge_gives_the_same_predictions_and_a_plain_model(parent, trained, molecules):
    adapted = copy.deepcopy(trained[0])
    energy, forces = predict(adapted, molecules)
    assert not torch.allclose(energy, predict(parent, molecules)[0], rtol=0, atol=1e-6), "training changed nothing"
    adapted.merge_lora()
    merged_energy, merged_forces = predict(adapted, molecules)
    torch.testing.assert_close(merged_energy, energy, rtol=1e-12, atol=1e-8)
    torch.testing.assert_close(merged_forces, forces, rtol=1e-10, atol=1e-10)
    assert not lora_parameters(adapted)
    assert adapted.state_dict().keys() == parent.state_dict().keys()
    adapted.merge_lora()  # nothing left to merge: a no-op
    torch.testing.assert_close(predict(adapted, molecules)[0], merged_energy, rtol=0, atol=0)


def test_large_adapter_updates_merge_exactly_and_stay_equivariant(parent, molecules):
    adapted = copy.deepcopy(parent)
    torch.manual_seed(0)  # the adapters' initial A matrices come from the global generator
    adapted.add_lora(rank=2, alpha=3.0)
    randomize_adapters(adapted, scale=0.2)
    atoms = molecules[3]
    rotated = atoms.copy()
    rotated.rotate(90, "z", center="COM")
    turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    (energy, forces), (energy_r, forces_r) = predict(adapted, [atoms]), predict(adapted, [rotated])
    assert not torch.allclose(energy, predict(parent, [atoms])[0], rtol=0, atol=1e-3), (energy - predict(parent, [atoms])[0])
    if parent.kind == "mace":  # PET is not equivariant by construction (it learns rotations from data)
        # the parent itself is rotation-exact to ~1e-8 here (positions rotated in float64)
        torch.testing.assert_close(energy_r, energy, rtol=0, atol=1e-7)
        torch.testing.assert_close(forces_r, forces @ turn.T, rtol=0, atol=1e-7)
    adapted.merge_lora()
    torch.testing.assert_close(predict(adapted, [atoms])[0], energy, rtol=1e-12, atol=1e-8)


def test_no_grad_predictions_follow_the_current_adapter_weights(parent, molecules):
    """An optimizer step or a load_state_dict between two no-grad calls must be seen."""
    adapted = copy.deepcopy(parent)
    adapted.add_lora(rank=4, alpha=8.0)
    with torch.no_grad():
        graph = adapted.collate_graphs([adapted.atoms_to_graph(a) for a in molecules])
        before = adapted(graph).energy
        randomize_adapters(adapted)
        after = adapted(graph).energy
    with_grad = adapted(graph).energy.detach()
    assert not torch.allclose(after, before, rtol=0, atol=1e-3)
    torch.testing.assert_close(after, with_grad, rtol=1e-12, atol=1e-8)


def test_invalid_lora_settings_are_refused(parent):
    for rank in (0, -2):
        with pytest.raises(StrategyError, match=rf"Strategy 'lora': LoRA rank must be a positive integer, got {rank}"):
            Strategy("lora", ["lora"], lora_rank=rank)
        with pytest.raises(ValueError, match=rf"LoRA rank must be a positive integer, got {rank}"):
            copy.deepcopy(parent).add_lora(rank=rank, alpha=8.0)
    with pytest.raises(StrategyError, match="LoRA alpha must be a positive number, got 0"):
        Strategy("lora", ["lora"], lora_rank=4, lora_alpha=0)
    with pytest.raises(StrategyError, match="set both or neither"):
        Strategy("lora", ["lora"])
    with pytest.raises(StrategyError, match="set both or neither"):
        Strategy("full", ["backbone", "heads"], lora_rank=4)
    adapted = copy.deepcopy(parent)
    adapted.add_lora(rank=4, alpha=8.0)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        adapted.add_lora(rank=4, alpha=8.0)


def test_backbones_without_lora_say_so():
    with pytest.raises(NotImplementedError, match="The base backbone does not support LoRA"):
        Backbone().add_lora(rank=4, alpha=8.0)
    with pytest.raises(NotImplementedError, match="The base backbone does not support LoRA"):
        Backbone().merge_lora()


def compose_train(tmp_path, overrides=()):
    import mlipprobe.config  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*SMALL, f"paths.output_dir={tmp_path}", *overrides])


def test_train_task_saves_the_merged_model(tmp_path, backbone_kind, parent):
    cfg = compose_train(tmp_path, [*BACKBONES[backbone_kind]["overrides"], "strategy=lora", "dtype=float64", "embed.parent=false"])
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["test/energy_per_atom_mae"])
    reloaded = load_backbone(objects["checkpoint"], dtype="float64").eval()
    assert reloaded.state_dict().keys() == parent.state_dict().keys()
    structures = objects["datamodule"].split("test")[:4]
    trained = objects["backbone"].eval()
    assert not lora_parameters(trained)
    (energy, forces), (saved_energy, saved_forces) = predict(trained, structures), predict(reloaded, structures)
    torch.testing.assert_close(saved_energy, energy, rtol=0, atol=0)
    # the trained model's frozen weights do not require gradients and the reloaded one's do:
    # autograd takes another path, which may change the forces' last bits (PET: ~1e-17)
    torch.testing.assert_close(saved_forces, forces, rtol=1e-12, atol=1e-15)


def test_cli_runs_strategy_lora(tmp_path, backbone_kind):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *SMALL, *BACKBONES[backbone_kind]["overrides"],
         "strategy=lora", "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load_backbone(tmp_path / "checkpoints" / "model.pt")
    assert not lora_parameters(saved) and (tmp_path / "embeddings" / "trained.h5").is_file()
