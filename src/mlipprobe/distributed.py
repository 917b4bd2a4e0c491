"""Lightning DDP (``trainer=ddp``) inside Hydra jobs, sweeps included.

Lightning starts ranks > 0 by running the script again with ``sys.argv`` plus
``hydra.run.dir`` (``_hydra_subprocess_cmd``). Inside ``train.py -m ...`` that argv is the
sweep: each child would start a sweep of its own, in the wrong folder. Here a job's
children run ``train.py <the job's overrides> hydra.run.dir=<the job's folder>``. The next
job of a sweep, in the same process, first ends what the previous job started (its ranks,
its process group, the launcher's environment variables), then launches its own ranks.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

log = logging.getLogger(__name__)

LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
CHILD_EXIT_TIMEOUT_S = 30


def job_folder() -> str | None:
    """The running Hydra job's output folder, or None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None


def job_command(local_rank: int) -> tuple[list[str], str]:
    """Command line and working folder of rank ``local_rank`` of the running Hydra job."""
    import __main__
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += ["--config-name", hydra_cfg.job.config_name]
    for source in hydra_cfg.runtime.config_sources:
        if source.provider == "command-line":
            command += ["--config-dir", source.path]
    command += [
        *hydra_cfg.overrides.task,
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        "hydra.mode=RUN",  # an experiment may set MULTIRUN in its config
        "hydra.output_subdir=null",  # rank 0 writes the job's .hydra/ folder
        f"hydra.job.name=train_ddp_process_{local_rank}",
    ]
    return command, get_original_cwd()


class _Observer(_ChildProcessObserver):
    """Lightning's watcher of the ranks (any rank failing ends them all), which can be stopped."""

    def stop(self) -> None:
        self._finished = True


@dataclass
class _LaunchedJob:
    folder: str
    children: list[subprocess.Popen]
    observer: _Observer
    environment: dict[str, str | None]  # the launcher variables before the launch


_launched: _LaunchedJob | None = None


def end_previous_job(folder: str | None) -> None:
    """End the ranks, process group and launcher variables of an earlier job of this process."""
    global _launched
    if _launched is None or _launched.folder == folder:
        return
    _launched.observer.stop()
    for child in _launched.children:
        try:
            child.wait(timeout=CHILD_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("A DDP rank of %s (pid %d) is still running: killing it", _launched.folder, child.pid)
            child.kill()
            child.wait()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for name, value in _launched.environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _launched = None


class _HydraJobLauncher(_SubprocessScriptLauncher):
    """Starts ranks > 0 with :func:`job_command` and records them for :func:`end_previous_job`."""

    def launch(self, function, *args, trainer=None, **kwargs):
        global _launched
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            environment = {name: os.environ.get(name) for name in LAUNCHER_VARIABLES}
            self._call_children_scripts()
            observer = _Observer(child_processes=self.procs, main_pid=os.getpid())
            observer.start()
            _launched = _LaunchedJob(job_folder(), self.procs, observer, environment)
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        """Lightning's, with the job's own command line for the children."""
        self._check_can_spawn_children()
        self.procs = []
        os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
        os.environ["NODE_RANK"] = str(self.cluster_environment.node_rank())
        os.environ["LOCAL_RANK"] = str(self.cluster_environment.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        for local_rank in range(1, self.num_processes):
            environment = {**os.environ, "LOCAL_RANK": str(local_rank)}
            if os.environ.get("PL_GLOBAL_SEED") is None:
                environment.pop("PL_GLOBAL_SEED", None)
            command, cwd = job_command(local_rank)
            self.procs.append(subprocess.Popen(command, env=environment, cwd=cwd))


class HydraJobDDPStrategy(DDPStrategy):
    """Lightning's ``DDPStrategy`` (same arguments) for Hydra jobs: ranks > 0 run the job's
    own overrides in the job's folder, so ``train.py -m ... trainer=ddp`` works.

    Outside Hydra, or when a cluster starts the ranks itself (SLURM, torchrun), it is
    Lightning's ``DDPStrategy``.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        end_previous_job(job_folder())

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _SubprocessScriptLauncher and job_folder() is not None:
            self._launcher = _HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)
