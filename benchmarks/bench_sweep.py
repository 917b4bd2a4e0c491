"""Wall time of one sweep run sequentially (Hydra's basic launcher) vs in parallel on the
same machine (hydra-joblib-launcher through ``hydra/launcher=parallel``).

The sweep: the demo's four fine-tuning strategies of the demo parent,
``experiment=demo_full,demo_head,demo_transfer_full,demo_transfer_head``
(``conf/experiment/``: each job trains, then embeds all 1000 molecules), with
``trainer=cpu logger=none`` and ``--epochs`` epochs per job (the demo has 5). Extra Hydra
overrides after the options go to both sweeps (``data.limit=100`` for a quick check). Both
sweeps run as ``train.py -m`` subprocesses, one after the other, each into its own
temporary sweep folder; a time is the wall time of the whole command (start-up, imports,
every job).

Threads: both sweeps use all the cores. The sequential sweep runs one job at a time with
every core (``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` = cores); the parallel sweep runs
``--n-jobs`` jobs at a time with cores // n_jobs threads each (the same variables, which
joblib's worker processes inherit; torch takes the lower of the two). Without this, the
parallel jobs would each start one thread per core and fight over them.

The script fails unless both sweeps finish every job and produce the same set of job
folders. The last line is ``ratio: <sequential time / parallel time>`` (above 1: the
parallel sweep is faster).

    python benchmarks/bench_sweep.py [--epochs 5] [--n-jobs 2] [--backbone demo_mace] [--keep DIR] [override ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = "experiment=demo_full,demo_head,demo_transfer_full,demo_transfer_head"


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_sweep(sweep_dir: Path, overrides: list[str], threads: int) -> float:
    """Run one ``train.py -m`` sweep with ``threads`` threads per job; its wall time in seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, str(ROOT / "train.py"), "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"Sweep into {sweep_dir} failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return elapsed


def finished_jobs(sweep_dir: Path) -> set[str]:
    """Names of the job folders of a sweep that hold a trained checkpoint."""
    return {path.parents[1].name for path in sweep_dir.glob("*/checkpoints/model.pt")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="trainer.max_epochs of every job")
    parser.add_argument("--n-jobs", type=int, default=2, help="jobs at a time in the parallel sweep")
    parser.add_argument("--backbone", default="demo_mace", help="parent: demo_mace | demo_pet")
    parser.add_argument("--keep", type=Path, help="write the two sweeps here and keep them")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both sweeps")
    args = parser.parse_args()

    cores = available_cores()
    if args.n_jobs > cores:
        parser.error(f"--n-jobs {args.n_jobs} is more than the {cores} available cores")
    threads_per_job = cores // args.n_jobs
    if args.keep and any((args.keep / name).exists() for name in ("sequential", "parallel")):
        parser.error(f"{args.keep} already holds a sweep: its finished jobs would be skipped, not timed")
    common = [EXPERIMENTS, f"backbone={args.backbone}", "trainer=cpu", f"trainer.max_epochs={args.epochs}",
              "logger=none", "trainer.enable_progress_bar=false", *args.overrides]
    parallel = ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.n_jobs}"]

    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as scratch:
        folder = args.keep or Path(scratch)
        print(f"sweep: {EXPERIMENTS} backbone={args.backbone}, {args.epochs} epochs, {cores} cores")
        sequential_time = run_sweep(folder / "sequential", common, threads=cores)
        print(f"sequential (basic launcher, 1 job at a time, {cores} threads): {sequential_time:.1f} s")
        parallel_time = run_sweep(folder / "parallel", [*common, *parallel], threads=threads_per_job)
        print(f"parallel (joblib, {args.n_jobs} jobs at a time, {threads_per_job} threads each): {parallel_time:.1f} s")

        sequential_jobs, parallel_jobs = finished_jobs(folder / "sequential"), finished_jobs(folder / "parallel")
        if sequential_jobs != parallel_jobs or len(sequential_jobs) != 4:
            raise RuntimeError(f"The sweeps differ: sequential {sorted(sequential_jobs)}, "
                               f"parallel {sorted(parallel_jobs)}")
        print(f"jobs: {len(sequential_jobs)}, the same folders in both sweeps")
    print(f"ratio: {sequential_time / parallel_time:.2f}")


if __name__ == "__main__":
    main()
