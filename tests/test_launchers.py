"""Launcher presets (conf/hydra/launcher/): SLURM through submitit, in parallel through joblib.

The SLURM tests run the real `train.py -m hydra/launcher=slurm` up to the `sbatch` call: a
fake `srun` on PATH lets submitit believe it is on a cluster, and a fake `sbatch` refuses
the submission, so the script that submitit wrote from our preset stays in the sweep
folder, next to the pickled jobs it would have run. The joblib test runs a real sweep.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import h5py
import pytest

from tests.test_train_entry import ROOT, SMALL

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='needs pip install -e ".[slurm]"')
pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason='needs pip install -e ".[joblib]"')

REFUSAL = "sbatch: error: no cluster in this test"


def sweep(*args):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *SMALL, *args],
                          capture_output=True, text=True, cwd=ROOT)


def fake_slurm_commands(folder, monkeypatch):
    """`srun` (submitit only checks that it exists) and an `sbatch` that refuses every job."""
    folder.mkdir()
    for name, body in [("srun", "exit 0"), ("sbatch", f"echo '{REFUSAL}' >&2\nexit 1")]:
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def sbatch_options(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", script, flags=re.MULTILINE))


def test_slurm_preset_submits_one_job_array_with_the_requested_resources(tmp_path, monkeypatch):
    import submitit

    fake_slurm_commands(tmp_path / "bin", monkeypatch)
    sweep_dir = tmp_path / "sweep"
    result = sweep("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                   "hydra.launcher.mem_gb=64", "trainer.devices=2", "strategy=full,head",
                   f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode != 0 and REFUSAL in result.stderr, result.stderr[-3000:]

    [script] = (sweep_dir / ".submitit").glob(".submission_file_*.sh")
    options = sbatch_options(script.read_text())
    assert options["partition"] == "gpu"
    assert options["time"] == "90" and options["mem"] == "64GB"
    # one process per GPU: SLURM's task count follows trainer.devices, and so do the GPUs
    assert options["gpus-per-node"] == "2" and options["ntasks-per-node"] == "2"
    assert options["nodes"] == "1" and options["cpus-per-task"] == "4"
    assert options["array"] == "0-1%2"  # two jobs, both may run at once
    assert options["job-name"] == "train"
    assert f"{sys.executable} -u -m submitit.core._submit {sweep_dir}/.submitit/%j" in script.read_text()

    # the array's tasks are the two Hydra jobs, each with its own overrides
    jobs = [submitit.helpers.DelayedSubmission.load(path) for path in (sweep_dir / ".submitit").glob("*.pkl")]
    assert sorted((job.args[2], job.args[0][-1]) for job in jobs) == [(0, "strategy=full"), (1, "strategy=head")]
    assert {type(job.function).__name__ for job in jobs} == {"SlurmLauncher"}


def test_slurm_preset_on_a_cpu_partition_asks_for_no_gpu(tmp_path, monkeypatch):
    fake_slurm_commands(tmp_path / "bin", monkeypatch)
    sweep_dir = tmp_path / "sweep"
    result = sweep("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "seed=0,1",
                   f"hydra.sweep.dir={sweep_dir}")
    assert REFUSAL in result.stderr, result.stderr[-3000:]
    [script] = (sweep_dir / ".submitit").glob(".submission_file_*.sh")
    options = sbatch_options(script.read_text())
    assert "gpus-per-node" not in options and options["ntasks-per-node"] == "1"
    assert "partition" not in options  # the cluster's default


def test_slurm_preset_refuses_a_gpu_count_it_cannot_ask_slurm_for(tmp_path, monkeypatch):
    fake_slurm_commands(tmp_path / "bin", monkeypatch)
    result = sweep("hydra/launcher=slurm", "trainer.devices=auto", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode != 0 and REFUSAL not in result.stderr
    assert re.search(r"trainer\.devices.*'auto'.*Integer\s+full_key: hydra\.launcher\.gpus_per_node", result.stderr)
    assert not (tmp_path / "sweep" / ".submitit").exists()


def test_parallel_preset_runs_a_sweep_with_joblib_and_every_job_writes_its_outputs(tmp_path):
    result = sweep("hydra/launcher=parallel", "strategy=full,head", "trainer.fast_dev_run=true",
                   "embed.parent=false", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    job_folders = [path.parent.parent for path in tmp_path.glob("*/checkpoints/model.pt")]
    strategies = []
    for folder in job_folders:
        assert (folder / "metrics.json").is_file()
        with h5py.File(folder / "embeddings" / "trained.h5") as handle:
            strategies.append(handle.attrs["strategy"])
    assert sorted(strategies) == ["full", "head"]
