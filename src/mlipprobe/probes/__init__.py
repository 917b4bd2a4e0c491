"""Differentiable probes and reconstruction heads (Lightning) and the functions that fit them."""

from mlipprobe.probes.fit import learning_curve, pool_features, probe_scores, reconstruction_error
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
]
