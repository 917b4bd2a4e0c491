r"""Composition Projection Decomposition (CPD) of structure-level representations.

A structure-level representation :math:`\mathbf{H}` (one row per structure: pooled
per-atom features, cumulants, ...) is split into the part that is an affine function
of the composition :math:`\mathbf{C}` and a residual orthogonal to it [Steier2026]_:

.. math::
    \mathbf{H} = \underbrace{\mathbf{Q}\mathbf{Q}^T\mathbf{H}}_{\mathbf{H}_\mathrm{comp}}
    + \underbrace{(\mathbf{I} - \mathbf{Q}\mathbf{Q}^T)\mathbf{H}}_{\mathbf{H}_\mathrm{res}},
    \qquad [\mathbf{1}, \mathbf{C}] = \mathbf{Q}\mathbf{R}

Probing the target with :math:`\mathbf{H}`, :math:`\mathbf{H}_\mathrm{comp}` and
:math:`\mathbf{H}_\mathrm{res}` tells how much of what the representation knows about
the target goes beyond (linear) composition: :math:`R^2_\mathrm{geom}`. The target is
never projected. Linear probes are the primary metric: the residual is orthogonal to
composition only linearly, so nonlinear probes (trees above all) can still read
composition from it.

Rows of :func:`composition_matrix` follow the sorted unique structure indices, the same
order as :func:`mlipprobe.analysis.cumulants.structure_cumulants`.

References
----------
.. [Steier2026] J. Steier, "Information Routing in Atomistic Foundation Models: A
   Composition Projection Decomposition Analysis", arXiv:2603.03155 (2026).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from sklearn.base import clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlipprobe.analysis.cumulants import _structure_groups

__all__ = [
    "PROBES",
    "composition_matrix",
    "composition_residual",
    "cpd_scores",
    "make_probe",
]

#: Names accepted by :func:`make_probe` and :func:`cpd_scores`.
PROBES = ("ridge", "mlp", "gbt")
#: Residual columns with norm below this fraction of the column's norm are rounding
#: noise (e.g. constant columns) and are set to exactly zero.
_ROUNDING_RTOL = 1e-11
_RIDGE_ALPHAS = tuple(np.logspace(-6, 6, 25))
_TREE_WARNING = (
    "gradient-boosted trees inflate residual scores: they read composition nonlinearly "
    "from H_res (R2_geom 0.68-0.95 on purely compositional targets in Steier 2026); "
    "treat the linear probe as the primary metric"
)


def composition_matrix(atomic_numbers, structure_index, elements=None, kind="fraction"):
    r"""Per-structure composition: element counts or fractions.

    .. math::
        N_{Ae} = \sum_{i \in A} [Z_i = e], \qquad
        C_{Ae} = N_{Ae} \ (\text{counts}) \quad\text{or}\quad
        C_{Ae} = N_{Ae} / n_A \ (\text{fractions})

    Parameters
    ----------
    atomic_numbers : array-like of int, shape (n_atoms,)
        Atomic number :math:`Z_i` of each atom, rows in any order.
    structure_index : array-like of int, shape (n_atoms,)
        Structure of each atom; output rows follow its sorted unique values.
    elements : array-like of int, shape (n_elements,), optional
        Atomic numbers of the columns, in this order; default: the sorted elements
        present. Elements absent from every structure give zero columns, handled by
        :func:`composition_residual`.
    kind : {"fraction", "count"}, default="fraction"
        Fractions sum to 1 in each row (one column is then redundant with the
        intercept); counts also carry the structure size.

    Returns
    -------
    C : numpy.ndarray of shape (n_structures, n_elements), float64
    elements : numpy.ndarray of int, shape (n_elements,)
        Atomic number of each column.
    """
    if kind not in ("fraction", "count"):
        raise ValueError(f"kind must be 'fraction' or 'count', got {kind!r}")
    numbers = np.asarray(atomic_numbers)
    if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
        raise ValueError(
            "atomic_numbers must be a 1-D integer array (n_atoms,), got shape "
            f"{numbers.shape} and dtype {numbers.dtype}"
        )
    _, inverse, counts = _structure_groups(structure_index, len(numbers))
    elements = _check_elements(numbers, elements)
    column = _element_columns(numbers, elements)
    n_structures, n_elements = len(counts), len(elements)
    N = np.bincount(inverse * n_elements + column, minlength=n_structures * n_elements)
    C = N.reshape(n_structures, n_elements).astype(np.float64)
    return (C / counts[:, None] if kind == "fraction" else C), elements


def composition_residual(H, C, *, train_idx=None, rank_tol=1e-10):
    r"""Split H into its composition part and the residual orthogonal to composition.

    .. math::
        \mathbf{A}\boldsymbol{\Pi} = [\mathbf{1}, \mathbf{C}]\boldsymbol{\Pi}
        = \mathbf{Q}\mathbf{R}, \qquad
        \mathbf{H}_\mathrm{comp} = \mathbf{Q}_r\mathbf{Q}_r^T\mathbf{H}, \qquad
        \mathbf{H}_\mathrm{res} = \mathbf{H} - \mathbf{H}_\mathrm{comp}

    with a column-pivoted (rank-revealing) QR: :math:`|R_{ii}|` decreases and only
    the :math:`r` leading columns with :math:`|R_{ii}| > \mathrm{tol}\,|R_{11}|` are
    kept, so redundant columns (fractions summing to 1, elements absent from every
    structure) are dropped. :math:`\mathbf{H}_\mathrm{res}` has zero column means and
    :math:`\mathbf{C}^T\mathbf{H}_\mathrm{res} = 0`. Only H is projected, never the
    target.

    By default the projector is built from all rows, as in [Steier2026]_: it uses no
    target, but the test rows' features shape it (transductive). With ``train_idx``
    the least-squares map :math:`\mathbf{B} = \mathbf{R}_r^{-1}\mathbf{Q}_r^T
    \mathbf{H}_\mathrm{train}` is fitted on those rows only and
    :math:`\mathbf{H}_\mathrm{comp} = \mathbf{A}\boldsymbol{\Pi}_r\mathbf{B}` is
    applied to every row (inductive; the residual is then orthogonal to composition on
    the training rows only, and an element absent from them is not projected out).

    Residual columns with :math:`\lVert\mathbf{h}^\mathrm{res}_j\rVert \le 10^{-11}
    \lVert\mathbf{h}_j\rVert` (columns of H lying in the span, e.g. constant ones) are
    rounding noise and set to zero, so that standardising probes do not amplify them.

    Parameters
    ----------
    H : array-like of shape (n_structures, n_features)
        Structure-level representation.
    C : array-like of shape (n_structures, n_elements)
        Composition, same rows as H (:func:`composition_matrix`).
    train_idx : array-like of int, shape (n_train,), optional
        Rows from which the projection is fitted; default: all rows.
    rank_tol : float, default=1e-10
        Relative threshold on :math:`|R_{ii}|` below which a column of
        :math:`[\mathbf{1}, \mathbf{C}]` counts as linearly dependent.

    Returns
    -------
    H_res : numpy.ndarray of shape (n_structures, n_features)
        Geometric residual :math:`(\mathbf{I} - \mathbf{Q}\mathbf{Q}^T)\mathbf{H}`.
    H_comp : numpy.ndarray of shape (n_structures, n_features)
        Composition part :math:`\mathbf{Q}\mathbf{Q}^T\mathbf{H}`.

    References
    ----------
    Steier, arXiv:2603.03155 (2026) [Steier2026]_.
    """
    H, C = _check_pair(H, C)
    A = np.hstack([np.ones((len(C), 1)), C])  # [1, C]
    rows = np.arange(len(H)) if train_idx is None else _as_indices(train_idx, len(H))
    Q, R, pivots = scipy.linalg.qr(A[rows], mode="economic", pivoting=True)
    rank = _numerical_rank(R, rank_tol)
    Q, R = Q[:, :rank], R[:rank, :rank]
    if train_idx is None:
        H_comp = Q @ (Q.T @ H)  # Q_r Q_r^T H
    else:
        B = scipy.linalg.solve_triangular(R, Q.T @ H[rows])  # least squares on train rows
        H_comp = A[:, pivots[:rank]] @ B
    H_res = H - H_comp
    rounding = np.linalg.norm(H_res, axis=0) <= _ROUNDING_RTOL * np.linalg.norm(H, axis=0)
    H_res[:, rounding] = 0.0
    return H_res, H_comp


def cpd_scores(
    H,
    C,
    y,
    probes=("ridge", "mlp"),
    *,
    cv=5,
    projection="global",
    rank_tol=1e-10,
    random_state=0,
):
    r"""Cross-validated :math:`R^2` of probes on H, its composition part and residual.

    .. math::
        R^2_\mathrm{full} = R^2(\mathbf{H} \to y), \quad
        R^2_\mathrm{comp} = R^2(\mathbf{H}_\mathrm{comp} \to y), \quad
        R^2_\mathrm{geom} = R^2(\mathbf{H}_\mathrm{res} \to y)

    each the mean (and standard deviation) over the test folds of a shuffled
    ``KFold(cv)``; every probe is fitted on the training folds only, with its scalers.
    A target linear in composition gives :math:`R^2_\mathrm{geom} \lesssim 0` with
    the linear probe. Also reported: the fraction of the (centred) variance of H
    explained by composition, :math:`\lVert\mathbf{H}_\mathrm{comp} -
    \bar{\mathbf{H}}\rVert^2 / \lVert\mathbf{H} - \bar{\mathbf{H}}\rVert^2`.

    Parameters
    ----------
    H : array-like of shape (n_structures, n_features)
        Structure-level representation.
    C : array-like of shape (n_structures, n_elements)
        Composition, same rows as H (:func:`composition_matrix`).
    y : array-like of shape (n_structures,)
        Target, not projected.
    probes : sequence of str or (str, estimator), default=("ridge", "mlp")
        Names from :data:`PROBES` (see :func:`make_probe`) or ``(name, estimator)``
        pairs; estimators are cloned, never fitted in place. ``"gbt"`` warns: trees
        inflate residual scores.
    cv : int, default=5
        Number of folds.
    projection : {"global", "fold"}, default="global"
        ``"global"``: one projection from all rows, as in [Steier2026]_;
        ``"fold"``: fitted on each training fold (``train_idx`` of
        :func:`composition_residual`), strictly inductive.
    rank_tol : float, default=1e-10
        Passed to :func:`composition_residual`.
    random_state : int, default=0
        Seed of the folds and of the stochastic probes.

    Returns
    -------
    dict of str to float
        ``"{probe}/r2_{part}"`` and ``"{probe}/r2_{part}_std"`` for every probe and
        part in ``full``, ``comp``, ``geom``; ``"composition/variance_fraction"``.

    References
    ----------
    Steier, arXiv:2603.03155 (2026) [Steier2026]_.
    """
    H, C = _check_pair(H, C)
    y = _check_target(y, len(H))
    if projection not in ("global", "fold"):
        raise ValueError(f"projection must be 'global' or 'fold', got {projection!r}")
    estimators = _probe_estimators(probes, random_state)
    H_res, H_comp = composition_residual(H, C, rank_tol=rank_tol)
    result = {"composition/variance_fraction": _variance_fraction(H, H_res)}
    scores = {}
    for train, test in KFold(cv, shuffle=True, random_state=random_state).split(H):
        if projection == "fold":
            H_res, H_comp = composition_residual(H, C, train_idx=train, rank_tol=rank_tol)
        for part, X in (("full", H), ("comp", H_comp), ("geom", H_res)):
            for name, estimator in estimators.items():
                model = clone(estimator).fit(X[train], y[train])
                scores.setdefault(f"{name}/r2_{part}", []).append(
                    r2_score(y[test], model.predict(X[test]))
                )
    for key, values in sorted(scores.items()):
        result[key], result[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
    return result


def make_probe(name, random_state=0):
    """A fresh probe: standardised inputs and target, then the regressor.

    ``"ridge"``: ``RidgeCV`` over ``logspace(-6, 6, 25)`` (efficient leave-one-out);
    ``"mlp"``: ``MLPRegressor`` with one hidden layer of 64 units, L2 ``alpha=1e-3``
    and early stopping on 10 % of the training rows; ``"gbt"``:
    ``HistGradientBoostingRegressor`` with default settings (warns: trees inflate
    residual scores). Inputs are standardised by ``StandardScaler`` and the target by
    ``TransformedTargetRegressor``, both fitted on the training rows only.

    Parameters
    ----------
    name : {"ridge", "mlp", "gbt"}
    random_state : int, default=0
        Seed of the MLP's initialisation and of the trees.

    Returns
    -------
    sklearn.compose.TransformedTargetRegressor
    """
    if name == "ridge":
        regressor = RidgeCV(alphas=_RIDGE_ALPHAS)
    elif name == "mlp":
        regressor = MLPRegressor(
            hidden_layer_sizes=(64,),
            alpha=1e-3,
            max_iter=500,
            early_stopping=True,
            n_iter_no_change=20,
            random_state=random_state,
        )
    elif name == "gbt":
        warnings.warn(_TREE_WARNING, UserWarning, stacklevel=2)
        regressor = HistGradientBoostingRegressor(random_state=random_state)
    else:
        raise ValueError(f"unknown probe {name!r}; choose from {PROBES} or pass (name, estimator)")
    return TransformedTargetRegressor(
        regressor=make_pipeline(StandardScaler(), regressor), transformer=StandardScaler()
    )


# ---------------------------------------------------------------------------------
# helpers and input checks
# ---------------------------------------------------------------------------------


def _variance_fraction(H, H_res):
    r"""Fraction of the centred variance of H explained by composition (global H_res)."""
    total = ((H - H.mean(0)) ** 2).sum()
    return float(1.0 - (H_res**2).sum() / total) if total > 0 else 0.0


def _probe_estimators(probes, random_state):
    if isinstance(probes, str):
        probes = (probes,)
    estimators = {}
    for probe in probes:
        name, estimator = (probe, None) if isinstance(probe, str) else probe
        if name in estimators:
            raise ValueError(f"probe name {name!r} given twice")
        estimators[name] = make_probe(name, random_state) if estimator is None else estimator
    if not estimators:
        raise ValueError("probes is empty; give at least one of " + ", ".join(PROBES))
    return estimators


def _numerical_rank(R, rank_tol):
    diagonal = np.abs(np.diag(R))  # non-increasing with column pivoting
    return max(1, int(np.sum(diagonal > rank_tol * diagonal[0])))


def _check_elements(numbers, elements):
    if elements is None:
        return np.unique(numbers)
    elements = np.asarray(elements)
    if elements.ndim != 1 or not np.issubdtype(elements.dtype, np.integer):
        raise ValueError(f"elements must be a 1-D integer array, got {elements!r}")
    if len(np.unique(elements)) != len(elements):
        raise ValueError(f"elements has repeated atomic numbers: {elements.tolist()}")
    missing = np.setdiff1d(numbers, elements)
    if len(missing):
        raise ValueError(
            f"atomic numbers {missing.tolist()} occur in the structures but not in "
            f"elements={elements.tolist()}; add them or leave elements=None"
        )
    return elements


def _element_columns(numbers, elements):
    """Column of each atom's element in ``elements`` (all present)."""
    sorter = np.argsort(elements)
    return sorter[np.searchsorted(elements, numbers, sorter=sorter)]


def _check_pair(H, C):
    H, C = _as_matrix("H", H), _as_matrix("C", C)
    if H.shape[0] != C.shape[0]:
        raise ValueError(
            f"H and C must have one row per structure: H has shape {H.shape}, "
            f"C has shape {C.shape}"
        )
    return H, C


def _check_target(y, n_structures):
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n_structures,):
        raise ValueError(
            f"y must have shape ({n_structures},), one value per row of H, got shape {y.shape}"
        )
    if not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinite values")
    return y


def _as_matrix(name, A):
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_structures, n_columns), got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return A


def _as_indices(indices, n_rows):
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"train_idx must be a 1-D integer array, got shape {indices.shape}")
    if len(indices) < 2 or indices.min() < -n_rows or indices.max() >= n_rows:
        raise ValueError(f"train_idx must hold at least 2 row indices in [0, {n_rows})")
    return indices
