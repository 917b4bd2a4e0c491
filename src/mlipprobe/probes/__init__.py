"""Differentiable probes and reconstruction heads (Lightning) and the functions that fit them."""

from mlipprobe.probes.fit import (
    learning_curve,
    pool_features,
    probe_scores,
    reconstruction_error,
    vector_probe_scores,
)
from mlipprobe.probes.modules import LinearProbe, MLPProbe, ProbeModule, ReconstructionModule

__all__ = [
    "LinearProbe",
    "MLPProbe",
    "ProbeModule",
    "ReconstructionModule",
    "learning_curve",
    "pool_features",
    "probe_scores",
    "reconstruction_error",
    "vector_probe_scores",
]
