"""OmegaConf resolvers used by the config tree (registered on import)."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

PRECISION = {"float32": "32-true", "float64": "64-true"}


def precision_of(dtype: str) -> str:
    """Lightning precision flag for a model dtype."""
    if dtype not in PRECISION:
        raise ValueError(f"dtype must be one of {sorted(PRECISION)}, got '{dtype}'")
    return PRECISION[dtype]


def wandb_offline() -> bool:
    """Offline unless an API key is configured (environment or ``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = os.path.expanduser("~/.netrc")
    if os.path.exists(netrc):
        with open(netrc) as handle:
            return "api.wandb.ai" not in handle.read()
    return True


def wandb_mode() -> str:
    return "offline" if wandb_offline() else "online"


def job_name(backbone: str, strategy: str, seed, overrides=()) -> str:
    from mlipprobe.sweeps import job_name as name

    return name(backbone, strategy, seed, list(overrides or ()))


def sweep_group() -> str | None:
    """The sweep folder's name inside a Hydra multirun (a wandb group), else None."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("mlipprobe.precision", precision_of, replace=True)
    OmegaConf.register_new_resolver("mlipprobe.wandb_offline", wandb_offline, replace=True)
    OmegaConf.register_new_resolver("mlipprobe.wandb_mode", wandb_mode, replace=True)
    OmegaConf.register_new_resolver("mlipprobe.job_name", job_name, replace=True)
    OmegaConf.register_new_resolver("mlipprobe.sweep_group", sweep_group, replace=True)
    OmegaConf.register_new_resolver("mlipprobe.basename", lambda path: os.path.basename(str(path).rstrip("/")), replace=True)


register_resolvers()
