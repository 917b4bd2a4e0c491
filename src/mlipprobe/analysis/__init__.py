"""Closed-form analyses of per-atom features."""

from mlipprobe.analysis.reconstruction import (
    DEFAULT_ALPHAS,
    DEFAULT_RANDOM_STATE,
    gfre,
    lfre,
    pointwise_gfre,
    pointwise_lfre,
    reconstruction_split,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_RANDOM_STATE",
    "gfre",
    "lfre",
    "pointwise_gfre",
    "pointwise_lfre",
    "reconstruction_split",
]
