"""Sweep bookkeeping: job folder names, job status files, skip and resume, the sweep summary.

Every ``train`` job keeps ``job.json`` in its output folder::

    {"name", "status": "running" | "finished" | "failed", "overrides", "backbone", "strategy",
     "seed", "config_sha256", "config", "started", "ended", "wall_time_s", "metrics",
     "outputs", "error"}

Re-running a job in the same folder (``resume=true``, the default) skips it when it finished
with the same configuration, and resumes it from ``checkpoints/lightning/last.ckpt`` when it
was interrupted or failed. In a Hydra multirun, every job rewrites ``summary.csv`` and
``summary.md`` in the sweep folder from all the jobs' ``job.json`` when it ends, so the
summary is complete when the sweep ends, whatever the launcher, and failed jobs are listed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from mlipprobe.io import atomic_path

log = logging.getLogger(__name__)

# overrides that already appear in a job's name, or that do not change what is trained
NAMED_OR_NEUTRAL = {"backbone", "strategy", "seed", "experiment", "trainer", "logger", "callbacks",
                    "resume", "trainer.enable_progress_bar", "trainer.accelerator", "trainer.devices"}
NEUTRAL_PREFIXES = ("hydra.", "hydra/", "paths.", "logger.")
# configuration keys that do not change the result of a job (left out of its hash)
UNHASHED = ("paths", "logger", "resume", "ckpt_path")


def job_name(backbone: str, strategy: str, seed: Any, overrides: Sequence[str] = ()) -> str:
    """A stable, readable folder name: ``<backbone>_<strategy>_seed<seed>`` followed by any
    other command-line override that changes the job (``optimizer.lr=0.001``); path values
    keep their file name only."""
    parts = [str(backbone), str(strategy), f"seed{seed}"]
    for override in sorted(overrides or ()):
        key, _, value = override.lstrip("+~").partition("=")
        if key in NAMED_OR_NEUTRAL or key.startswith(NEUTRAL_PREFIXES):
            continue
        parts.append(f"{key}={Path(value).name if '/' in value else value}")
    return "_".join(parts)


def hashed_config(cfg: DictConfig) -> dict:
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in UNHASHED:
        config.pop(key, None)
    return config


def config_sha256(config: Mapping) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def config_differences(old: Mapping, new: Mapping) -> list[str]:
    """Dotted keys whose values differ between two configurations."""
    a, b = _flatten(dict(old)), _flatten(dict(new))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


class JobRecord:
    """The ``job.json`` of one output folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "job.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    @property
    def status(self) -> str | None:
        return self.data.get("status")

    def write(self, **fields) -> None:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        self.data.update(fields)
        if getattr(rank_zero_only, "rank", 0) != 0:  # under DDP the job is recorded once, by rank 0
            return
        with atomic_path(self.path) as temporary:
            temporary.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str))


def last_checkpoint(cfg: DictConfig) -> Path | None:
    """``last.ckpt`` of the job's ModelCheckpoint callback, if it exists."""
    callback = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if not callback or not callback.get("save_last"):
        return None
    path = Path(callback.dirpath) / "last.ckpt"
    return path if path.is_file() else None


def hydra_job() -> tuple[list[str], Path | None]:
    """The job's command-line overrides and, inside a multirun, the sweep folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], None
    hydra = HydraConfig.get()
    sweep = Path(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None
    return list(hydra.overrides.task), sweep


class ConfigConflict(ValueError):
    """An output folder holds a finished job of another configuration."""


def start_job(cfg: DictConfig) -> tuple[JobRecord, bool]:
    """Open the job record of ``cfg.paths.output_dir``. Returns ``(record, finished)``:
    ``finished`` when the folder holds the same job, already done (it is then skipped).
    Sets ``cfg.ckpt_path`` to the folder's ``last.ckpt`` when an earlier try was interrupted."""
    record = JobRecord(cfg.paths.output_dir)
    overrides, _ = hydra_job()
    config = hashed_config(cfg)
    digest = config_sha256(config)
    if cfg.get("resume", True) and record.status == "finished":
        if record.data.get("config_sha256") == digest:
            log.info("Skipping %s: finished earlier with the same configuration (resume=false reruns it)",
                     record.folder)
            return record, True
        changed = config_differences(record.data.get("config", {}), config)
        raise ConfigConflict(
            f"{record.folder} holds a finished job with another configuration (differs in: "
            f"{', '.join(changed[:8]) or 'unknown'}). Use another output folder (hydra.sweep.dir=... or "
            "hydra.run.dir=...), or resume=false to train again in this one."
        )
    resume_from = last_checkpoint(cfg) if cfg.get("resume", True) and not cfg.get("ckpt_path") else None
    if resume_from is not None:
        if record.data.get("config_sha256") not in (None, digest):
            log.warning("Resuming %s with a configuration that differs in: %s", resume_from,
                        ", ".join(config_differences(record.data.get("config", {}), config)[:8]))
        log.info("Resuming the interrupted job from %s", resume_from)
        cfg.ckpt_path = str(resume_from)
    record.data = {}
    record.write(
        name=record.folder.name, status="running", overrides=overrides,
        backbone=cfg.backbone.get("kind"), strategy=cfg.strategy.get("name"), seed=cfg.get("seed"),
        config_sha256=digest, config=config, started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        resumed_from=str(resume_from) if resume_from else None, _t0=time.time(),
    )
    return record, False


def end_job(record: JobRecord, metrics: Mapping | None = None, outputs: Mapping | None = None,
            error: BaseException | None = None) -> None:
    """Mark the job finished (or failed, with the error) and refresh the sweep summary."""
    wall = time.time() - record.data.pop("_t0", time.time())
    fields = dict(ended=time.strftime("%Y-%m-%dT%H:%M:%S"), wall_time_s=round(wall, 1))
    if error is None:
        record.write(status="finished", metrics=dict(metrics or {}), error=None,
                     outputs={k: str(v) for k, v in (outputs or {}).items()}, **fields)
    else:
        while error.__cause__ is not None:  # Hydra wraps what the target raised
            error = error.__cause__
        message = " ".join(f"{type(error).__name__}: {error}".split())
        record.write(status="failed", error=message[:500], **fields)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    _, sweep = hydra_job()
    if sweep is not None and getattr(rank_zero_only, "rank", 0) == 0:
        write_summary(sweep)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock (``fcntl.flock``) on ``path``: parallel jobs of a sweep wait for each
    other instead of training the same parent twice or interleaving the summary."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """The train.py configuration with ``overrides``, from inside a Hydra job or outside one."""
    import os

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=list(overrides))
    root = Path(os.environ.get("MLIPPROBE_ROOT", "."))
    with initialize_config_dir(config_dir=str((root / "conf").resolve()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def run_requirements(cfg: DictConfig, run: Callable[[DictConfig], Any]) -> None:
    """Train each job of ``cfg.requires`` (``{dir, overrides}``) into its folder unless it
    holds a finished job already; a job that needs it waits while another trains it."""
    for requirement in cfg.get("requires") or []:
        folder = Path(requirement.dir)
        if JobRecord(folder).status == "finished":
            continue
        with file_lock(folder.parent / f".{folder.name}.lock"):
            if JobRecord(folder).status == "finished":
                continue
            log.info("Training required job %s first (%s)", folder, " ".join(requirement.overrides))
            run(compose_train([*requirement.overrides, f"paths.output_dir={folder}"]))


# --- the sweep summary -----------------------------------------------------------------------
SUMMARY_COLUMNS = ["job", "status", "backbone", "strategy", "seed", "wall_time_s"]


def summary_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per ``job.json`` below ``sweep_dir``: status, strategy, seed, metrics, paths."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for path in sorted(sweep_dir.glob("**/job.json")):
        data = json.loads(path.read_text())
        row = {"job": str(path.parent.relative_to(sweep_dir)), **{k: data.get(k) for k in SUMMARY_COLUMNS[1:]}}
        row.update({k: v for k, v in sorted((data.get("metrics") or {}).items())})
        outputs = data.get("outputs") or {}
        row["checkpoint"] = outputs.get("checkpoint", "")
        row["embeddings"] = outputs.get("embeddings", "")
        row["error"] = data.get("error") or ""
        rows.append(row)
    return rows


def write_summary(sweep_dir: str | Path) -> tuple[Path, Path] | None:
    """``summary.csv`` (every metric) and ``summary.md`` (test metrics) of a sweep folder."""
    sweep_dir = Path(sweep_dir)
    with file_lock(sweep_dir / ".summary.lock"):
        rows = summary_rows(sweep_dir)
        if rows:
            _write_summary(sweep_dir, rows)
    return (sweep_dir / "summary.csv", sweep_dir / "summary.md") if rows else None


def _write_summary(sweep_dir: Path, rows: list[dict]) -> None:
    from mlipprobe.reporting import markdown_table, write_rows

    metrics = sorted({k for row in rows for k in row if "/" in k})
    write_rows(rows, sweep_dir / "summary.csv", [*SUMMARY_COLUMNS, *metrics, "checkpoint", "embeddings", "error"])
    shown = [*SUMMARY_COLUMNS, *(m for m in metrics if m.startswith("test/")), "error"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "running")}
    text = (f"# Sweep {sweep_dir}\n\n{len(rows)} jobs: {counts['finished']} finished, {counts['failed']} failed, "
            f"{counts['running']} running or interrupted. Every metric and path: `summary.csv`.\n\n"
            + markdown_table(rows, shown, digits=4) + "\n")
    with atomic_path(sweep_dir / "summary.md") as temporary:
        temporary.write_text(text)
