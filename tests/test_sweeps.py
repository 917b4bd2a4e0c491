"""Sweeps: job names, skip/resume, failing jobs, the summary table, wandb run folders."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from mlipprobe.sweeps import ConfigConflict, job_name
from mlipprobe.tasks import run
from tests.helpers.sweep_helpers import wandb_records
from tests.test_train_entry import ROOT, SMALL, compose_train

PARENT = ROOT / "checkpoints" / "demo_mace_parent.pt"


def test_job_names_are_readable_and_keep_every_override_that_changes_the_job():
    name = job_name("demo_mace", "full", 1, ["strategy=full", "seed=1", "optimizer.lr=0.001",
                                            "trainer=cpu", "hydra.sweep.dir=/x", "backbone.checkpoint=/a/b/m.model"])
    assert name == "demo_mace_full_seed1_backbone.checkpoint=m.model_optimizer.lr=0.001"
    assert job_name("pet", "head", 0, ["optimizer.lr=0.01"]) != job_name("pet", "head", 0, ["optimizer.lr=0.001"])
    assert job_name("pet", "head", 0) == "pet_head_seed0"


def sweep(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *SMALL, *args],
                          capture_output=True, text=True, cwd=cwd)


def test_a_failing_job_is_recorded_and_does_not_stop_the_sweep_and_a_rerun_skips_finished_jobs(tmp_path):
    checkpoints = f"backbone.checkpoint=/nonexistent/parent.pt,{PARENT}"
    result = sweep(checkpoints, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode != 0  # the sweep reports the failure ...
    failed = tmp_path / "demo_mace_full_seed0_backbone.checkpoint=parent.pt_data.limit=40_trainer.max_epochs=1"
    finished = tmp_path / "demo_mace_full_seed0_backbone.checkpoint=demo_mace_parent.pt_data.limit=40_trainer.max_epochs=1"
    assert json.loads((failed / "job.json").read_text())["status"] == "failed"
    assert not (failed / "checkpoints" / "model.pt").exists()
    # ... but the job after the failing one ran to the end
    record = json.loads((finished / "job.json").read_text())
    assert record["status"] == "finished" and (finished / "checkpoints" / "model.pt").is_file()
    with open(tmp_path / "summary.csv", newline="") as handle:
        rows = {row["job"]: row for row in csv.DictReader(handle)}
    assert rows[failed.name]["status"] == "failed" and "/nonexistent/parent.pt" in rows[failed.name]["error"]
    assert rows[finished.name]["status"] == "finished"
    assert float(rows[finished.name]["test/energy_per_atom_mae"]) == record["metrics"]["test/energy_per_atom_mae"]
    assert "1 finished, 1 failed" in (tmp_path / "summary.md").read_text()

    stamp = (finished / "checkpoints" / "model.pt").stat().st_mtime_ns
    again = sweep(checkpoints, f"hydra.sweep.dir={tmp_path}")
    assert again.returncode != 0
    assert "Skipping" in again.stderr + again.stdout
    assert (finished / "checkpoints" / "model.pt").stat().st_mtime_ns == stamp  # not trained again
    assert json.loads((failed / "job.json").read_text())["status"] == "failed"  # tried again, failed again


def test_an_interrupted_job_resumes_from_its_last_checkpoint_and_ends_like_an_uninterrupted_one(tmp_path):
    two_epochs = ["trainer.max_epochs=2", "embed.parent=false"]
    run(compose_train(tmp_path / "straight", two_epochs))
    interrupt = ["+callbacks.interrupt._target_=tests.helpers.sweep_helpers.InterruptAfterEpoch"]
    with pytest.raises(RuntimeError, match="interrupted after epoch 0"):
        run(compose_train(tmp_path / "resumed", [*two_epochs, *interrupt]))
    folder = tmp_path / "resumed"
    assert json.loads((folder / "job.json").read_text())["status"] == "failed"
    assert (folder / "checkpoints" / "lightning" / "last.ckpt").is_file()
    assert not (folder / "checkpoints" / "model.pt").exists()

    run(compose_train(folder, two_epochs))
    record = json.loads((folder / "job.json").read_text())
    assert record["status"] == "finished" and record["resumed_from"].endswith("last.ckpt")
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(folder / "checkpoints" / "model.pt", weights_only=True)["state_dict"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key

    with pytest.raises(ConfigConflict, match=r"optimizer\.lr"):
        run(compose_train(folder, [*two_epochs, "optimizer.lr=0.1"]))


def test_wandb_runs_offline_per_job_with_config_metrics_and_embedding_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: offline
    result = sweep("logger=wandb", "strategy=full,head", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/job.json"))
    assert len(jobs) == 2
    for job in jobs:
        files = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, job
        records = wandb_records(files[0])
        run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run_record.display_name == job.name and run_record.run_group == "sweep"
        key = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731
        updates = [*run_record.config.update,
                   *(u for r in records if r.WhichOneof("record_type") == "config" for u in r.config.update)]
        config = {key(item): json.loads(item.value_json) for item in updates}
        assert config["strategy"]["name"] == job.name.split("_")[2] and config["seed"] == 0
        history = [r for r in records if r.WhichOneof("record_type") == "history"]
        logged = {key(item) for r in history for item in r.history.item}
        assert {"val/loss", "test/energy_per_atom_mae"} <= logged
        artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
        assert [a.type for a in artifacts] == ["embeddings"]
        assert {e.path for e in artifacts[0].manifest.contents} == {"parent.h5", "trained.h5"}
