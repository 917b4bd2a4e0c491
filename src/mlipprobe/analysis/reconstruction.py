r"""Feature reconstruction measures (GFRE, LFRE) in torch: exact and batched.

These functions reproduce scikit-matter's
:func:`skmatter.metrics.global_reconstruction_error` and
:func:`skmatter.metrics.local_reconstruction_error` with their default settings
[Goscinski2021]_: the same train/test split, the same
:class:`~skmatter.preprocessing.StandardFlexibleScaler` (whole-matrix scaling fitted
on the training split, X and Y scaled separately) and the same
:class:`~skmatter.linear_model.Ridge2FoldCV` (relative alphas, ``cutoff``
regularisation, 2-fold cross-validation scored by the column-averaged RMSE, no
intercept). The ridge is solved with singular value decompositions batched over test
points, and nearest neighbours come from blocked squared distances, so the local
measure scales to :math:`10^5` atoms on CPU or GPU.

References
----------
.. [Goscinski2021] A. Goscinski, G. Fraux, G. Imbalzano, M. Ceriotti,
   "The role of feature space in atomistic learning",
   Mach. Learn.: Sci. Technol. 2, 025028 (2021).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import KFold, train_test_split

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_RANDOM_STATE",
    "gfre",
    "lfre",
    "pointwise_gfre",
    "pointwise_lfre",
    "reconstruction_split",
]

#: scikit-matter's fixed seed for the train/test split and the ridge's two folds.
DEFAULT_RANDOM_STATE = 0x5F3759DF
#: scikit-matter's ridge regularisations, relative to the largest singular value.
DEFAULT_ALPHAS = tuple(float(alpha) for alpha in np.geomspace(1e-9, 0.9, 20))
#: scikit-matter's StandardFlexibleScaler refuses a total variance below this.
_MIN_TOTAL_VARIANCE = 1e-12

_SHARED_PARAMETERS = """\
    train_idx : array-like of int, shape (n_train,), optional
        Rows used to fit the scaler and the ridge. If ``None``, the complement of
        ``test_idx``; if both are ``None``, scikit-matter's split: 50/50, shuffled
        with ``random_state`` (see :func:`reconstruction_split`).
    test_idx : array-like of int, shape (n_test,), optional
        Rows on which the error is measured. If ``None``, the complement of
        ``train_idx``.
    scaler : bool, default=True
        Centre X and Y on their training means and divide each by the square root
        of its total training variance (scikit-matter's ``StandardFlexibleScaler``,
        ``column_wise=False``), so that the errors lie between ~0 and ~1.
    alphas : sequence of float, optional
        Regularisations tried by the 2-fold cross-validation; default
        ``geomspace(1e-9, 0.9, 20)`` (:data:`DEFAULT_ALPHAS`).
    alpha_type : {"relative", "absolute"}, default="relative"
        ``"relative"`` multiplies the alphas by the largest singular value of the
        two folds.
    regularization_method : {"cutoff", "tikhonov"}, default="cutoff"
        ``"cutoff"`` drops singular values :math:`s \\le \\alpha`; ``"tikhonov"``
        replaces :math:`1/s` by :math:`s/(s^2+\\alpha)`.
    random_state : int, default=0x5F3759DF
        Seed of the default train/test split and of the ridge's two folds.
    device : str or torch.device, optional
        Where to compute; default: the device of ``X`` if it is a tensor, else CPU.
    dtype : torch.dtype, default=torch.float64
        Floating-point type of the computation.
"""


def _shared_docs(function):
    """Insert the parameter text shared by every measure into the docstring."""
    function.__doc__ = function.__doc__.replace("    <shared parameters>\n", _SHARED_PARAMETERS)
    return function


# ---------------------------------------------------------------------------------
# public measures
# ---------------------------------------------------------------------------------


@_shared_docs
def pointwise_gfre(
    X,
    Y,
    *,
    train_idx=None,
    test_idx=None,
    scaler=True,
    alphas=None,
    alpha_type="relative",
    regularization_method="cutoff",
    random_state=DEFAULT_RANDOM_STATE,
    device=None,
    dtype=torch.float64,
):
    r"""Pointwise global feature reconstruction error of Y from X.

    .. math::
        \mathrm{GFRE}^{(i)}(X \to Y) = \lVert \mathbf{y}_i - \mathbf{x}_i\mathbf{P}
        \rVert, \qquad
        \mathbf{P} = \operatorname*{argmin}_{\mathbf{P}}
        \lVert \mathbf{Y}_\mathrm{train} - \mathbf{X}_\mathrm{train}\mathbf{P}\rVert^2

    for every test point :math:`i`, with :math:`\mathbf{P}` the ridge fitted on the
    (scaled) training split, its regularisation chosen by 2-fold cross-validation.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features_x)
        Source features, one row per sample (atom).
    Y : array-like or torch.Tensor of shape (n_samples, n_features_y)
        Target features reconstructed from X, same rows as X.
    <shared parameters>

    Returns
    -------
    numpy.ndarray of shape (n_test,)
        Reconstruction error of each test point, in the order of ``test_idx``.

    References
    ----------
    Goscinski, Fraux, Imbalzano, Ceriotti, Mach. Learn.: Sci. Technol. 2, 025028
    (2021) [Goscinski2021]_.
    """
    ridge = _Ridge2FoldCV.from_options(alphas, alpha_type, regularization_method, random_state)
    X_train, X_test, Y_train, Y_test = _prepare_data(
        X, Y, train_idx, test_idx, scaler, random_state, device, dtype
    )
    Y_tilde = ridge.fit_predict(X_train[None], Y_train[None], X_test[None])[0]
    return torch.linalg.vector_norm(Y_test - Y_tilde, dim=1).cpu().numpy()


@_shared_docs
def gfre(
    X,
    Y,
    *,
    train_idx=None,
    test_idx=None,
    scaler=True,
    alphas=None,
    alpha_type="relative",
    regularization_method="cutoff",
    random_state=DEFAULT_RANDOM_STATE,
    device=None,
    dtype=torch.float64,
):
    r"""Global feature reconstruction error of Y from X.

    .. math::
        \mathrm{GFRE}(X \to Y) = \sqrt{\frac{1}{n_\mathrm{test}}
        \sum_{i \in \mathrm{test}} \mathrm{GFRE}^{(i)}(X \to Y)^2}

    the root mean square of :func:`pointwise_gfre`. It is asymmetric:
    :math:`\mathrm{GFRE}(X \to Y) \neq \mathrm{GFRE}(Y \to X)`.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features_x)
        Source features, one row per sample (atom).
    Y : array-like or torch.Tensor of shape (n_samples, n_features_y)
        Target features reconstructed from X, same rows as X.
    <shared parameters>

    Returns
    -------
    float
        The error: ~0 when Y is a linear function of X, ~1 when X explains nothing.

    References
    ----------
    Goscinski, Fraux, Imbalzano, Ceriotti, Mach. Learn.: Sci. Technol. 2, 025028
    (2021) [Goscinski2021]_.
    """
    return _root_mean_square(
        pointwise_gfre(
            X,
            Y,
            train_idx=train_idx,
            test_idx=test_idx,
            scaler=scaler,
            alphas=alphas,
            alpha_type=alpha_type,
            regularization_method=regularization_method,
            random_state=random_state,
            device=device,
            dtype=dtype,
        )
    )


@_shared_docs
def pointwise_lfre(
    X,
    Y,
    n_local_points=None,
    *,
    train_idx=None,
    test_idx=None,
    scaler=True,
    alphas=None,
    alpha_type="relative",
    regularization_method="cutoff",
    random_state=DEFAULT_RANDOM_STATE,
    device=None,
    dtype=torch.float64,
    batch_size=256,
):
    r"""Pointwise local feature reconstruction error of Y from X.

    .. math::
        \tilde{\mathbf{y}}_i = \bar{\mathbf{y}}^{(i)}
        + (\mathbf{x}_i - \bar{\mathbf{x}}^{(i)})\mathbf{P}^{(i)}, \qquad
        \mathrm{LFRE}^{(i)}(X \to Y) = \lVert \mathbf{y}_i - \tilde{\mathbf{y}}_i \rVert

    .. math::
        \mathbf{P}^{(i)} = \operatorname*{argmin}_{\mathbf{P}}
        \sum_{j \in \mathcal{N}_k(i)} \lVert (\mathbf{y}_j - \bar{\mathbf{y}}^{(i)})
        - (\mathbf{x}_j - \bar{\mathbf{x}}^{(i)})\mathbf{P} \rVert^2

    where :math:`\mathcal{N}_k(i)` are the :math:`k` = ``n_local_points`` training
    points nearest to test point :math:`i` in (scaled) X and
    :math:`\bar{\mathbf{x}}^{(i)}, \bar{\mathbf{y}}^{(i)}` their means; each
    :math:`\mathbf{P}^{(i)}` is a ridge whose regularisation is chosen by 2-fold
    cross-validation on the neighbours, exactly as for :func:`pointwise_gfre`.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features_x)
        Source features, one row per sample (atom).
    Y : array-like or torch.Tensor of shape (n_samples, n_features_y)
        Target features reconstructed from X, same rows as X.
    n_local_points : int, optional
        Neighbourhood size :math:`k`, between 2 and ``n_train``; default
        ``min(n_features_x, n_features_y)`` as in [Goscinski2021]_ (scikit-matter
        has no default).
    <shared parameters>
    batch_size : int, default=256
        Test points whose neighbours and local ridges are computed together. Peak
        memory is about ``8 * batch_size * (2 * n_train + 3 * k * (n_features_x +
        n_features_y))`` bytes in float64 (~0.5 GB for 10^5 training points).

    Returns
    -------
    numpy.ndarray of shape (n_test,)
        Local reconstruction error of each test point, in the order of ``test_idx``.

    References
    ----------
    Goscinski, Fraux, Imbalzano, Ceriotti, Mach. Learn.: Sci. Technol. 2, 025028
    (2021) [Goscinski2021]_.
    """
    ridge = _Ridge2FoldCV.from_options(alphas, alpha_type, regularization_method, random_state)
    X_train, X_test, Y_train, Y_test = _prepare_data(
        X, Y, train_idx, test_idx, scaler, random_state, device, dtype
    )
    k = _check_n_local_points(n_local_points, X_train.shape, Y_train.shape)
    batch_size = _check_positive_int("batch_size", batch_size)
    train_sq_norms = (X_train**2).sum(1)
    errors = []
    for start in range(0, len(X_test), batch_size):
        x, y = X_test[start : start + batch_size], Y_test[start : start + batch_size]
        neighbours = _nearest_training_points(x, X_train, train_sq_norms, k)
        errors.append(_local_errors(ridge, X_train[neighbours], Y_train[neighbours], x, y))
    return torch.cat(errors).cpu().numpy()


@_shared_docs
def lfre(
    X,
    Y,
    n_local_points=None,
    *,
    train_idx=None,
    test_idx=None,
    scaler=True,
    alphas=None,
    alpha_type="relative",
    regularization_method="cutoff",
    random_state=DEFAULT_RANDOM_STATE,
    device=None,
    dtype=torch.float64,
    batch_size=256,
):
    r"""Local feature reconstruction error of Y from X.

    .. math::
        \mathrm{LFRE}(X \to Y) = \sqrt{\frac{1}{n_\mathrm{test}}
        \sum_{i \in \mathrm{test}} \mathrm{LFRE}^{(i)}(X \to Y)^2}

    the root mean square of :func:`pointwise_lfre`: each test point is reconstructed
    by a ridge fitted on its ``n_local_points`` nearest training points.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features_x)
        Source features, one row per sample (atom).
    Y : array-like or torch.Tensor of shape (n_samples, n_features_y)
        Target features reconstructed from X, same rows as X.
    n_local_points : int, optional
        Neighbourhood size :math:`k`, between 2 and ``n_train``; default
        ``min(n_features_x, n_features_y)`` as in [Goscinski2021]_.
    <shared parameters>
    batch_size : int, default=256
        Test points whose neighbours and local ridges are computed together.

    Returns
    -------
    float
        The error: ~0 when Y is locally a linear function of X.

    References
    ----------
    Goscinski, Fraux, Imbalzano, Ceriotti, Mach. Learn.: Sci. Technol. 2, 025028
    (2021) [Goscinski2021]_.
    """
    return _root_mean_square(
        pointwise_lfre(
            X,
            Y,
            n_local_points,
            train_idx=train_idx,
            test_idx=test_idx,
            scaler=scaler,
            alphas=alphas,
            alpha_type=alpha_type,
            regularization_method=regularization_method,
            random_state=random_state,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
        )
    )


def reconstruction_split(
    n_samples, train_idx=None, test_idx=None, random_state=DEFAULT_RANDOM_STATE
):
    """Train and test indices exactly as scikit-matter's reconstruction measures pick them.

    With neither index given: ``sklearn.model_selection.train_test_split`` of
    ``arange(n_samples)`` with ``train_size=test_size=0.5``, ``shuffle=True`` and
    ``random_state``. With one given: the other is its sorted complement.

    Parameters
    ----------
    n_samples : int
        Number of rows of X and Y.
    train_idx, test_idx : array-like of int, optional
        Explicit indices (rows of X and Y).
    random_state : int, default=0x5F3759DF
        Seed of the shuffled split.

    Returns
    -------
    train_idx, test_idx : numpy.ndarray of int
    """
    if train_idx is None and test_idx is None:
        if n_samples < 4:
            raise ValueError(
                f"need at least 4 samples for the default 50/50 split, got {n_samples}"
            )
        return train_test_split(
            np.arange(n_samples),
            train_size=0.5,
            test_size=0.5,
            random_state=random_state,
            shuffle=True,
        )
    train_idx = _as_indices("train_idx", train_idx, n_samples)
    test_idx = _as_indices("test_idx", test_idx, n_samples)
    if train_idx is None:
        train_idx = np.setdiff1d(np.arange(n_samples), test_idx)
    if test_idx is None:
        test_idx = np.setdiff1d(np.arange(n_samples), train_idx)
    if len(train_idx) < 2 or len(test_idx) < 1:
        raise ValueError(
            f"need at least 2 training and 1 test points, got {len(train_idx)} and {len(test_idx)}"
        )
    return train_idx, test_idx


# ---------------------------------------------------------------------------------
# the ridge: scikit-matter's Ridge2FoldCV, batched
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ridge2FoldCV:
    r"""Ridge without intercept whose regularisation is chosen by 2-fold CV.

    With :math:`\mathbf{X}_f = \mathbf{U}_f\mathbf{S}_f\mathbf{V}_f^T` (fold
    :math:`f`), the model of fold 1 predicts fold 2 as
    :math:`\mathbf{X}_2\mathbf{V}_1 g_\alpha(\mathbf{S}_1)\mathbf{U}_1^T\mathbf{Y}_1`
    with :math:`g_\alpha(s) = [s > \alpha]/s` (cutoff) or :math:`s/(s^2+\alpha)`
    (Tikhonov); the alpha with the best mean of the two fold scores (minus the
    column-averaged RMSE) is used on all rows. Folds: ``KFold(2, shuffle=True,
    random_state)``; singular values below ``rcond = max(n, p) * eps`` are ignored.
    scikit-matter 0.4.1 applies ``rcond`` on the folds only (its final fit counts
    ``len(s > rcond)``, i.e. every value); we apply it to the final fit as well. This
    changes nothing unless the chosen alpha is below ``rcond``, which with scaled
    float64 data does not happen; in float32 it avoids dividing by the near-zero
    singular value of a centred neighbourhood with ``k <= p``.
    """

    alphas: tuple
    relative: bool
    cutoff: bool
    random_state: int

    @classmethod
    def from_options(cls, alphas, alpha_type, regularization_method, random_state):
        alphas = DEFAULT_ALPHAS if alphas is None else tuple(float(a) for a in np.ravel(alphas))
        if alpha_type not in ("relative", "absolute"):
            raise ValueError(f"alpha_type must be 'relative' or 'absolute', got {alpha_type!r}")
        if regularization_method not in ("cutoff", "tikhonov"):
            raise ValueError(
                "regularization_method must be 'cutoff' or 'tikhonov', "
                f"got {regularization_method!r}"
            )
        if not alphas or min(alphas) < 0 or (alpha_type == "relative" and max(alphas) >= 1):
            raise ValueError(
                f"alphas must be a non-empty sequence of values >= 0 (and < 1 when "
                f"alpha_type='relative'), got {alphas}"
            )
        relative, cutoff = alpha_type == "relative", regularization_method == "cutoff"
        return cls(alphas, relative, cutoff, random_state)

    def fit_predict(self, X, Y, X_new):
        """Fit on each batch element and predict its new rows.

        X (b, n, p), Y (b, n, q), X_new (b, m, p) -> (b, m, q).
        """
        n, p = X.shape[-2:]
        rcond = max(n, p) * torch.finfo(X.dtype).eps
        fold1, fold2 = _two_folds(n, self.random_state, X.device)
        svd1 = torch.linalg.svd(X[:, fold1], full_matrices=False)
        svd2 = torch.linalg.svd(X[:, fold2], full_matrices=False)
        alphas = torch.tensor(self.alphas, dtype=X.dtype, device=X.device).expand(len(X), -1)
        if self.relative:
            s_max = torch.maximum(svd1.S.amax(-1), svd2.S.amax(-1))
            alphas = alphas * s_max[:, None]
        rmse_1_to_2 = self._fold_rmse(svd1, X[:, fold2], Y[:, fold1], Y[:, fold2], alphas, rcond)
        rmse_2_to_1 = self._fold_rmse(svd2, X[:, fold1], Y[:, fold2], Y[:, fold1], alphas, rcond)
        scores = (-rmse_1_to_2 - rmse_2_to_1) / 2
        best_alpha = alphas.gather(1, scores.argmax(1, keepdim=True))
        U, s, Vt = torch.linalg.svd(X, full_matrices=False)
        weights = self._filter(s, best_alpha, rcond)  # upstream: len(s > rcond), see class
        return (X_new @ (Vt.mT * weights[:, None, :])) @ (U.mT @ Y)

    def _fold_rmse(self, svd, X_other, Y_own, Y_other, alphas, rcond):
        """Column-averaged RMSE on the other fold for each alpha: (b, n_alphas)."""
        U, s, Vt = svd
        A = X_other @ Vt.mT  # X_2 V_1
        B = U.mT @ Y_own  # U_1^T Y_1
        rmse = torch.empty_like(alphas)
        previous = None
        for j in range(alphas.shape[1]):
            weights = self._filter(s, alphas[:, j : j + 1], rcond)
            if previous is not None and torch.equal(weights, previous):
                rmse[:, j] = rmse[:, j - 1]  # same truncation: an exact tie, as upstream
                continue
            residual = Y_other - (A * weights[:, None, :]) @ B
            rmse[:, j] = (residual**2).mean(1).sqrt().mean(1)
            previous = weights
        return rmse

    def _filter(self, s, alpha, rcond):
        """Spectral weights g_alpha(s), zero for s <= rcond: (b, r) from alpha (b, 1)."""
        keep = s > rcond
        if self.cutoff:
            keep = keep & (s > alpha)
            weights = 1 / s
        else:
            weights = s / (s**2 + alpha)
        return torch.where(keep, weights, torch.zeros_like(s))


def _two_folds(n, random_state, device):
    """scikit-matter's folds: the first split of KFold(2, shuffle=True, random_state)."""
    fold1, fold2 = next(KFold(2, shuffle=True, random_state=random_state).split(np.empty((n, 1))))
    return torch.as_tensor(fold1, device=device), torch.as_tensor(fold2, device=device)


# ---------------------------------------------------------------------------------
# data preparation and local neighbourhoods
# ---------------------------------------------------------------------------------


def _prepare_data(X, Y, train_idx, test_idx, scaler, random_state, device, dtype):
    """Check, split and (optionally) scale X and Y: four tensors on ``device``."""
    if device is None:
        device = X.device if isinstance(X, torch.Tensor) else "cpu"
    X = _as_matrix("X", X, device, dtype)
    Y = _as_matrix("Y", Y, device, dtype)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X and Y must have one row per sample: X has shape {tuple(X.shape)}, "
            f"Y has shape {tuple(Y.shape)}"
        )
    train_idx, test_idx = reconstruction_split(len(X), train_idx, test_idx, random_state)
    train_idx = torch.as_tensor(train_idx, device=device)
    test_idx = torch.as_tensor(test_idx, device=device)
    X_train, X_test = X[train_idx], X[test_idx]
    Y_train, Y_test = Y[train_idx], Y[test_idx]
    if scaler:
        X_train, X_test = _flexible_scale("X", X_train, X_test)
        Y_train, Y_test = _flexible_scale("Y", Y_train, Y_test)
    return X_train, X_test, Y_train, Y_test


def _flexible_scale(name, train, test):
    r"""Centre on the training mean and divide by :math:`\sqrt{\sum_j \mathrm{Var}_j}`."""
    mean = train.mean(0)
    total_variance = ((train - mean) ** 2).mean(0).sum()
    if total_variance < _MIN_TOTAL_VARIANCE:
        raise ValueError(
            f"{name} has (almost) zero total variance on the training split "
            f"({float(total_variance):.3g}); it cannot be scaled. Pass scaler=False "
            "or use non-constant features."
        )
    scale = total_variance.sqrt()
    return (train - mean) / scale, (test - mean) / scale


def _nearest_training_points(x, X_train, train_sq_norms, k):
    """Indices (b, k) of the k training rows nearest each row of x, nearest first."""
    sq_distances = (x @ X_train.T).mul_(-2)  # same rounding as (|a|^2 + |b|^2) - 2 a.b
    sq_distances += train_sq_norms + (x**2).sum(1, keepdim=True)
    return torch.topk(sq_distances, k, dim=1, largest=False, sorted=True).indices


def _local_errors(ridge, X_local, Y_local, x, y):
    """LFRE^(i) for a batch: neighbours X_local (b, k, p), Y_local (b, k, q)."""
    x_mean = X_local.mean(1, keepdim=True)  # \bar{x}^{(i)}
    y_mean = Y_local.mean(1, keepdim=True)  # \bar{y}^{(i)}
    y_tilde = y_mean + ridge.fit_predict(
        X_local - x_mean, Y_local - y_mean, x[:, None, :] - x_mean
    )  # \tilde{y}_i = \bar{y} + (x_i - \bar{x}) P^{(i)}
    return torch.linalg.vector_norm(y[:, None, :] - y_tilde, dim=(1, 2))


# ---------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------


def _as_matrix(name, A, device, dtype):
    A = A.detach() if isinstance(A, torch.Tensor) else torch.as_tensor(np.asarray(A))
    if A.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (n_samples, n_features), got shape {tuple(A.shape)}"
        )
    A = A.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(A).all()):
        raise ValueError(f"{name} contains NaN or infinite values; drop or impute those rows first")
    return A


def _as_indices(name, indices, n_samples):
    if indices is None:
        return None
    if isinstance(indices, torch.Tensor):
        indices = indices.cpu().numpy()
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D array of integer row indices")
    if len(indices) and (indices.min() < -n_samples or indices.max() >= n_samples):
        raise ValueError(f"{name} has indices outside [0, {n_samples}) (rows of X and Y)")
    return indices


def _check_n_local_points(n_local_points, train_shape, target_shape):
    if n_local_points is None:
        n_local_points = min(train_shape[1], target_shape[1])
    n_local_points = _check_positive_int("n_local_points", n_local_points)
    if not 2 <= n_local_points <= train_shape[0]:
        raise ValueError(
            f"n_local_points={n_local_points} must lie between 2 and the number of "
            f"training points ({train_shape[0]}); lower it or use more training points"
        )
    return n_local_points


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _root_mean_square(errors):
    """sqrt(mean(e_i^2)), computed as scikit-matter does: ||e|| / sqrt(n)."""
    return float(np.linalg.norm(errors) / np.sqrt(len(errors)))
