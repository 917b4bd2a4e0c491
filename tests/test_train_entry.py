"""The real entry point: Hydra config tree, train/embed tasks, CLI, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mlipprobe import load_backbone
from mlipprobe.tasks import ConfigError, embed, run, train

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
SMALL = ["data.limit=40", "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false", "trainer=cpu"]


def compose_train(tmp_path, overrides=()):
    import mlipprobe.config  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*SMALL, f"paths.output_dir={tmp_path}", *overrides])


def rows_of_split(datamodule, split="test"):
    return sum(len(a) for a in datamodule.split(split))


def test_default_run_trains_and_writes_checkpoints_and_embeddings(tmp_path):
    metrics, objects = train(compose_train(tmp_path))
    assert np.isfinite(metrics["test/energy_per_atom_mae"])
    datamodule = objects["datamodule"]
    n_rows = rows_of_split(datamodule)
    for name in ("parent", "trained"):
        with h5py.File(tmp_path / "embeddings" / f"{name}.h5") as handle:
            assert handle["features/backbone"].shape[0] == n_rows
            assert handle["features/last_layer"].shape[0] == n_rows
            assert handle.attrs["backbone"] == "mace" and handle.attrs["strategy"] == "full"
            assert len(handle.attrs["checkpoint_sha256"]) == 64 and len(handle.attrs["dataset_sha256"]) == 64
            expected = np.concatenate([a.numbers for a in datamodule.split("test")])
            np.testing.assert_array_equal(handle["atomic_numbers"][()], expected)
    trained = load_backbone(tmp_path / "checkpoints" / "model.pt")
    with h5py.File(tmp_path / "embeddings" / "trained.h5") as handle:
        np.testing.assert_allclose(
            handle["features/backbone"][()], trained.embed(datamodule.split("test"))["backbone"], atol=1e-5
        )
    assert (tmp_path / "checkpoints" / "model.model").is_file()
    assert (tmp_path / "metrics.json").is_file()
    assert not list(tmp_path.glob("**/*.partial"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_fast_dev_run(tmp_path, experiment):
    extra = [f"study.dir={tmp_path / 'study'}", "study.parent_epochs=1"] if experiment == "pretraining_bias" else []
    cfg = compose_train(tmp_path, [f"experiment={experiment}", "trainer.fast_dev_run=true", *extra])
    run(cfg)  # the task as train.py runs it: required parents first
    assert (tmp_path / "checkpoints" / "model.pt").is_file()


DEMO_EXPERIMENTS = [e for e in EXPERIMENTS if e.startswith("demo_")]


@pytest.mark.parametrize("experiment", DEMO_EXPERIMENTS)
def test_demo_experiments_run_on_the_pet_parent(tmp_path, experiment):
    """The demo's five strategies on the `mtt train` checkpoint; metatrain can read what we write."""
    cfg = compose_train(tmp_path, [f"experiment={experiment}", "backbone=demo_pet", "trainer.fast_dev_run=true"])
    _, objects = train(cfg)
    assert objects["backbone"].kind == "pet"
    assert load_backbone(tmp_path / "checkpoints" / "model.pt").kind == "pet"
    with h5py.File(tmp_path / "embeddings" / "trained.h5") as handle:
        assert handle.attrs["backbone"] == "pet"
        assert handle["features/backbone"].shape[0] == handle["atomic_numbers"].shape[0]
    from metatrain.utils.io import load_model

    assert load_model(str(tmp_path / "checkpoints" / "model.ckpt")).atomic_types == [1, 6, 7, 8, 9]


def test_pet_from_hyperparameters_trains_and_lora_runs(tmp_path):
    train(compose_train(tmp_path / "scratch", ["backbone=pet_small", "strategy=scratch", "trainer.fast_dev_run=true", "embed.parent=false"]))
    train(compose_train(tmp_path / "lora", ["backbone=demo_pet", "strategy=lora", "trainer.fast_dev_run=true"]))
    assert (tmp_path / "lora" / "checkpoints" / "model.ckpt").is_file()


def test_embed_task_writes_a_standalone_embedding_file(tmp_path):
    checkpoint = ROOT / "checkpoints" / "demo_mace_parent.pt"
    output = tmp_path / "parent.h5"
    cfg = compose_train(tmp_path, ["task=embed", f"embed.output={output}", "embed.features=[backbone,last_layer,layer0_L1]"])
    embed(cfg)
    with h5py.File(output) as handle:
        assert set(handle["features"]) == {"backbone", "last_layer", "layer0_L1"}
        assert handle.attrs["checkpoint"] == str(checkpoint)


def test_inference_mode_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="inference_mode"):
        train(compose_train(tmp_path, ["trainer.inference_mode=true"]))


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, cwd=cwd)


def test_cli_runs_the_default_job(tmp_path):
    result = run_cli(*SMALL, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "model.pt").is_file()
    assert (tmp_path / "embeddings" / "trained.h5").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.keys.energy=no_such_key"], r"no_such_key.*qm9_demo\.extxyz"),
        (["data.path=/nonexistent/file.xyz"], r"/nonexistent/file\.xyz"),
        (["backbone=mace", "backbone.checkpoint=/nonexistent/model.model"], r"/nonexistent/model\.model does not exist"),
        (["data.splits.fractions.test=0.0", "data.embed_split=test"], r"Split 'test'.* is empty"),
        (["backbone=pet", f"backbone.checkpoint={ROOT}/checkpoints/demo_pet_parent.ckpt"],
         r"demo_pet_parent\.ckpt is a whole pickled .*backbone\.trusted=true"),
        (["backbone=pet_small", "+backbone.hypers.d_pett=8"], r"Unknown PET hyperparameter\(s\) \['d_pett'\]"),
    ],
)
def test_cli_bad_input_exits_non_zero_with_a_clear_message_and_no_output(tmp_path, overrides, message):
    import re

    result = run_cli(*SMALL, f"hydra.run.dir={tmp_path}", *overrides)
    assert result.returncode != 0
    assert re.search(message, result.stderr + result.stdout), (result.stderr + result.stdout)[-2000:]
    assert not list(tmp_path.glob("checkpoints/*")) and not list(tmp_path.glob("embeddings/*"))


def test_wandb_logger_runs_offline_inside_the_output_folder(tmp_path, monkeypatch):
    from mlipprobe.cli import task_wrapper

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    task_wrapper(train)(compose_train(tmp_path, ["logger=wandb", "data.limit=24"]))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    import wandb

    assert wandb.run is None  # finished by the task wrapper


def test_ema_and_float64_runs(tmp_path):
    metrics, objects = train(compose_train(tmp_path, ["callbacks=ema", "dtype=float64", "data.limit=24"]))
    assert np.isfinite(metrics["test/energy_per_atom_mae"])
    assert objects["backbone"].dtype.is_floating_point and str(objects["backbone"].dtype) == "torch.float64"
