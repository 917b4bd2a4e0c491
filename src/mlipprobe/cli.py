"""Shared pieces of the Hydra entry points."""

from __future__ import annotations

import functools
import logging
import sys

import mlipprobe.config  # noqa: F401  (registers the config resolvers)

log = logging.getLogger("mlipprobe")


def task_wrapper(function):
    """Log a failure with its message, and always close a wandb run (one per job)."""

    @functools.wraps(function)
    def wrapped(cfg):
        try:
            return function(cfg)
        except Exception:
            log.exception("Job failed")
            raise
        finally:
            wandb = sys.modules.get("wandb")
            if wandb is not None and wandb.run is not None:
                wandb.finish()

    return wrapped
