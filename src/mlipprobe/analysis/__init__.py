"""Closed-form analyses of per-atom features: reconstruction errors, cumulants, CPD."""

from mlipprobe.analysis.cpd import PROBES, composition_matrix, composition_residual, cpd_scores, make_probe
from mlipprobe.analysis.cumulants import (
    cumulant_block,
    cumulant_blocks,
    cumulants_from_central_moments,
    signed_root,
    structure_cumulants,
)
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
    "PROBES",
    "composition_matrix",
    "composition_residual",
    "cpd_scores",
    "cumulant_block",
    "cumulant_blocks",
    "cumulants_from_central_moments",
    "gfre",
    "lfre",
    "make_probe",
    "pointwise_gfre",
    "pointwise_lfre",
    "reconstruction_split",
    "signed_root",
    "structure_cumulants",
]
