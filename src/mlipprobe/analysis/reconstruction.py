r"""Feature reconstruction measures (GFRE, LFRE) in torch: exact and batched.

These functions reproduce scikit-matter's
:func:`skmatter.metrics.global_reconstruction_error` and
:func:`skmatter.metrics.local_reconstruction_error` with their default settings
[Goscinski2021]_: the same train/test split, the same
:class:`~skmatter.preprocessing.StandardFlexibleScaler` (whole-matrix scaling fitted
on the training split, X and Y scaled separately) and the same
:class:`~skmatter.linear_model.Ridge2FoldCV` (relative alphas, ``cutoff``
regularisation, 2-fold cross-validation scored by the column-averaged RMSE, no
intercept). The ridge takes its singular value decompositions from the eigenvectors of
the smaller Gram matrix, batched over test points, and scores every regularisation
from one spectrum; where squaring the singular values could change which ones are
kept, it falls back to SVDs, so that the results stay scikit-matter's to ~1e-11.
Nearest neighbours come from blocked squared distances, so the local measure scales to
:math:`10^5` atoms on CPU or GPU.

References
----------
.. [Goscinski2021] A. Goscinski, G. Fraux, G. Imbalzano, M. Ceriotti,
   "The role of feature space in atomistic learning",
   Mach. Learn.: Sci. Technol. 2, 025028 (2021).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache, partial

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
    order = ridge.fold_order(len(X_train), X_train.device)
    Y_tilde = ridge.fit_predict(X_train[order][None], Y_train[order][None], X_test[None])[0]
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
    return root_mean_square(
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
        memory beyond the inputs is about ``8 * batch_size * (2 * n_train + k *
        (n_features_x + 2 * n_features_y + k))`` bytes in float64 (~0.6 GB for 10^5
        training points and 128 -> 256 features).

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
    fold_order = ridge.fold_order(k, X_train.device)
    errors = []
    for start in range(0, len(X_test), batch_size):
        x, y = X_test[start : start + batch_size], Y_test[start : start + batch_size]
        neighbours = _nearest_training_points(x, X_train, train_sq_norms, k)[:, fold_order]
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
    return root_mean_square(
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

#: Relative accuracy required of a squared singular value read off a Gram matrix;
#: smaller ones are "unresolved" (see :class:`_GramSpectrum`).
_GRAM_RELATIVE_ACCURACY = 1e-7
_THREAD_COUNT_LOCK = threading.Lock()


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

    The decompositions come from the eigenvectors of the smaller Gram matrix
    (:class:`_GramSpectrum`), and one spectrum scores every alpha
    (:meth:`_fold_rmse`). Batch elements whose Gram matrices cannot resolve a
    singular value that an alpha might keep are refitted with SVDs
    (:class:`_SVDSpectrum`), as scikit-matter computes them.
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

    def fold_order(self, n, device=None):
        """Row order (n,) that puts the first fold first: ``fit_predict`` expects it."""
        return torch.as_tensor(np.concatenate(_two_folds(n, self.random_state)), device=device)

    def fit_predict(self, X, Y, X_new, centred=False):
        """Fit on each batch element and predict its new rows.

        X (b, n, p), Y (b, n, q), X_new (b, m, p) -> (b, m, q); rows of X and Y in
        :meth:`fold_order`. ``centred``: the columns of each X sum to zero.
        """
        n, p = X.shape[-2:]
        rcond = max(n, p) * torch.finfo(X.dtype).eps
        n_first = len(_two_folds(n, self.random_state)[0])
        args = (n_first, rcond, centred)
        if X.dtype != torch.float64:  # squared singular values: no digits left to trust
            return self._fit_predict(X, Y, X_new, *args, _SVDSpectrum)[0]
        prediction, unresolved = self._fit_predict(X, Y, X_new, *args, _GramSpectrum)
        if unresolved.any():
            prediction[unresolved] = self._fit_predict(
                X[unresolved], Y[unresolved], X_new[unresolved], *args, _SVDSpectrum
            )[0]
        return prediction

    def _fit_predict(self, X, Y, X_new, n_first, rcond, centred, spectrum):
        """Prediction (b, m, q) with ``spectrum`` decompositions, and where they fall short (b,)."""
        data = _Rows(X, Y)
        first, second = data.split(n_first)
        spectrum1, spectrum2 = spectrum(first), spectrum(second)
        alphas = torch.tensor(self.alphas, dtype=X.dtype, device=X.device).expand(len(X), -1)
        if self.relative:
            s_max = torch.maximum(spectrum1.s2[:, -1], spectrum2.s2[:, -1]).sqrt()
            alphas = alphas * s_max[:, None]
        rmse_1_to_2 = self._fold_rmse(spectrum1, second, alphas, rcond)
        rmse_2_to_1 = self._fold_rmse(spectrum2, first, alphas, rcond)
        scores = (-rmse_1_to_2 - rmse_2_to_1) / 2
        best_alpha = alphas.gather(1, scores.argmax(1, keepdim=True))
        full = spectrum(data, centred)
        prediction = full.predict(X_new, self._weights(full.s2, best_alpha, rcond))
        smallest_cut = self._cut(alphas.amin(1), rcond)
        unresolved = (spectrum1.unresolved > smallest_cut) | (spectrum2.unresolved > smallest_cut)
        return prediction, unresolved | (full.unresolved > self._cut(best_alpha[:, 0], rcond))

    def _fold_rmse(self, spectrum, other, alphas, rcond):
        r"""Column-averaged RMSE on the other fold for each alpha: (b, n_alphas).

        The fold's model predicts the other fold as :math:`\mathbf{F} \operatorname{diag}(h)
        \mathbf{W}` with :math:`\mathbf{F} = \mathbf{X}_o\mathbf{V}\mathbf{S}`,
        :math:`\mathbf{W} = \mathbf{U}^T\mathbf{Y}` and :math:`h_j = g_\alpha(s_j)/s_j`,
        so that the squared error of column :math:`c` is

        .. math::
            \lVert \mathbf{y}_c \rVert^2 + \sum_j h_j W_{jc} \Bigl(
            G_{jj} h_j W_{jc} + 2 \sum_{l>j} G_{jl} h_l W_{lc} - 2 D_{jc} \Bigr), \quad
            \mathbf{D} = \mathbf{F}^T\mathbf{Y}_o, \ \mathbf{G} = \mathbf{F}^T\mathbf{F}.
        """
        if self.cutoff:
            sse, n_kept = self._cutoff_sse(spectrum, other, alphas, rcond)
        else:
            sse = self._tikhonov_sse(spectrum, other, alphas, rcond)
        rmse = (sse.clamp(min=0) / other.X.shape[1]).sqrt().mean(-1)
        if self.cutoff:  # equal truncations tie exactly, as upstream
            same_truncation = n_kept[:, :, None] == n_kept[:, None, :]
            rmse = rmse.gather(1, same_truncation.to(torch.uint8).argmax(-1))
        return rmse

    def _cutoff_sse(self, spectrum, other, alphas, rcond):
        """Squared errors (b, n_alphas, q) and kept counts (b, n_alphas) of every cutoff.

        A cutoff keeps the largest singular values: with them last (ascending order),
        the sum over kept pairs (j, l) becomes one over kept j of the terms above,
        computed once for all j.
        """
        weights = self._weights(spectrum.s2, torch.zeros_like(alphas[:, :1]), rcond)
        hW, D, G = spectrum.fold_products(other, weights)
        r = G.shape[-1]
        pair_weights = torch.ones(r, r, dtype=G.dtype, device=G.device).triu(1) * 2
        pair_weights.diagonal().fill_(1)
        terms = hW * torch.baddbmm(D, G * pair_weights, hW, beta=-2)
        kept = spectrum.s2[:, None, :] > self._cut(alphas, rcond)[..., None] ** 2
        return torch.baddbmm(other.y_sq[:, None, :], kept.to(G.dtype), terms), kept.sum(-1)

    def _tikhonov_sse(self, spectrum, other, alphas, rcond):
        """Squared errors (b, n_alphas, q), one alpha at a time."""
        (W, D, G), sse = spectrum.fold_products(other), []
        for alpha in alphas.unbind(1):
            hW = W * self._weights(spectrum.s2, alpha[:, None], rcond)[..., None]
            sse.append(other.y_sq + (hW * torch.baddbmm(D, G, hW, beta=-2)).sum(1))
        return torch.stack(sse, dim=1)

    def _weights(self, s2, alpha, rcond):
        """Spectral weights h = g_alpha(s)/s, zero for s <= rcond: (b, r) from alpha (b, 1)."""
        if self.cutoff:
            return torch.where(s2 > self._cut(alpha, rcond) ** 2, 1 / s2, 0)
        return torch.where(s2 > rcond**2, 1 / (s2 + alpha), 0)

    def _cut(self, alpha, rcond):
        """Singular values at or below this are dropped: max(alpha, rcond) or rcond."""
        return alpha.clamp(min=rcond) if self.cutoff else torch.full_like(alpha, rcond)


class _Rows:
    """Rows X (b, n, p) and Y (b, n, q) of a ridge problem, or of one of its folds, with
    the products the ridge needs, each computed once; folds take their row products
    from the whole problem's, which sums the folds' column products."""

    def __init__(self, X, Y=None, parent=None, index=slice(None)):
        self.X, self.Y, self.parent, self.index = X, Y, parent, index
        self.folds = ()

    @property
    def rows_side(self):
        """Whether X X^T (n <= p) is the smaller Gram matrix."""
        return self.X.shape[1] <= self.X.shape[2]

    def split(self, n_first):
        sizes = [n_first, self.X.shape[1] - n_first]
        parts = zip(self.X.split(sizes, 1), self.Y.split(sizes, 1))
        index = (slice(0, n_first), slice(n_first, None))
        self.folds = tuple(_Rows(X, Y, self, i) for (X, Y), i in zip(parts, index))
        return self.folds

    @cached_property
    def row_gram(self):
        """X X^T (b, n, n)."""
        return self.cross(self)

    def cross(self, other):
        """other.X X^T (b, n_other, n)."""
        parent = self.parent
        if parent is not None and parent is other.parent and parent.rows_side:
            return parent.row_gram[:, other.index, self.index]
        return other.X @ self.X.mT

    @cached_property
    def column_gram(self):
        """X^T X (b, p, p)."""
        if self.folds:
            return sum(fold.column_gram for fold in self.folds)
        return self.X.mT @ self.X

    @cached_property
    def XtY(self):
        """X^T Y (b, p, q)."""
        if self.folds:
            return sum(fold.XtY for fold in self.folds)
        return self.X.mT @ self.Y

    @cached_property
    def y_sq(self):
        """Squared norms of the columns of Y (b, q)."""
        return torch.linalg.vector_norm(self.Y, dim=1) ** 2


class _GramSpectrum:
    r"""Thin SVD :math:`\mathbf{X} = \mathbf{U}\mathbf{S}\mathbf{V}^T` of a batch of
    :class:`_Rows` from the eigendecomposition of the smaller Gram matrix,

    .. math::
        \mathbf{X}\mathbf{X}^T = \mathbf{U}\mathbf{S}^2\mathbf{U}^T \ (n \le p), \qquad
        \mathbf{X}^T\mathbf{X} = \mathbf{V}\mathbf{S}^2\mathbf{V}^T \ (n > p),

    the other side following from :math:`\mathbf{X}^T\mathbf{U} = \mathbf{V}\mathbf{S}`;
    ``s2`` (b, r) holds :math:`s^2` in ascending order. An eigenvalue of the computed
    Gram matrix is off by up to about :math:`e = (\min(n, p) + \sqrt{\max(n, p)})\,
    \epsilon\, s_\max^2` (the eigensolver's backward error and the rounding of the
    sums), so :math:`s^2` is trusted only above :math:`e / 10^{-7}`
    (:data:`_GRAM_RELATIVE_ACCURACY`; :math:`s / s_\max \gtrsim 4 \times 10^{-4}` for
    128 features); below, all we know is :math:`s \le \sqrt{s^2 + e}`. ``unresolved``
    (b,) is the largest such bound, 0 when every value is trusted: any cutoff at or
    above it keeps exactly the singular values an SVD would keep.

    ``centred`` (columns of X summing to zero, :math:`n \le p`) removes the exact zero
    singular value that centring creates, so that it does not count as unresolved:
    see :class:`_MeanReflection`.
    """

    def __init__(self, data, centred=False):
        n, p = data.X.shape[1:]
        self.data, self.rows = data, data.rows_side
        gram = data.row_gram if self.rows else data.column_gram
        self.reflection = None
        if centred and self.rows:
            self.reflection = _MeanReflection(n, gram.dtype, gram.device)
            gram = self.reflection.of_gram(gram)
        s2, self.vectors = _eigh(gram)
        self.s2 = s2.clamp(min=0)
        error = (min(n, p) + np.sqrt(max(n, p))) * torch.finfo(s2.dtype).eps * self.s2[:, -1:]
        trusted = self.s2 >= error / _GRAM_RELATIVE_ACCURACY
        self.unresolved = torch.where(trusted, 0, self.s2 + error).amax(-1).sqrt()

    def fold_products(self, other, weights=None):
        r"""diag(h) W, D and G of :meth:`_Ridge2FoldCV._fold_rmse` for predicting ``other``.

        From the rows, :math:`\mathbf{F} = \mathbf{X}_o\mathbf{X}^T\mathbf{U}`; from the
        columns, :math:`\mathbf{D} = \mathbf{S}\mathbf{V}^T\mathbf{X}_o^T\mathbf{Y}_o`,
        :math:`\mathbf{G} = \mathbf{S}\mathbf{V}^T\mathbf{X}_o^T\mathbf{X}_o\mathbf{V}\mathbf{S}`
        and :math:`\mathbf{W} = \mathbf{S}^{-1}\mathbf{V}^T\mathbf{X}^T\mathbf{Y}`.
        """
        if self.rows:
            F = self._in_basis(self.data.cross(other))
            hW = _scale_columns(self.left_vectors(), weights).mT @ self.data.Y
            return hW, F.mT @ other.Y, F.mT @ F
        s = self.s2.sqrt()
        VS = self.vectors * s[:, None, :]
        inverse_s = torch.where(s > 0, 1 / s, 0)
        weights = inverse_s if weights is None else weights * inverse_s
        hW = _scale_columns(self.vectors, weights).mT @ self.data.XtY
        return hW, VS.mT @ other.XtY, VS.mT @ other.column_gram @ VS

    def predict(self, Z, weights):
        r""":math:`\mathbf{Z}\mathbf{V}\mathbf{S}\operatorname{diag}(h)\mathbf{U}^T\mathbf{Y}`
        (b, m, q): :math:`(\mathbf{Z}\mathbf{X}^T\mathbf{U}) \operatorname{diag}(h)
        (\mathbf{U}^T\mathbf{Y})` from the rows, :math:`\mathbf{Z}\mathbf{V}
        \operatorname{diag}(h) \mathbf{V}^T\mathbf{X}^T\mathbf{Y}` from the columns."""
        if not self.rows:
            return _scale_columns(Z @ self.vectors, weights) @ (self.vectors.mT @ self.data.XtY)
        scaled = _scale_columns(self._in_basis(Z @ self.data.X.mT), weights)
        return self._from_basis(scaled) @ self.data.Y

    def left_vectors(self):
        """U (b, n, r), from the rows."""
        if self.reflection is None:
            return self.vectors
        eye = torch.eye(self.vectors.shape[-1]).to(self.vectors)
        return self._from_basis(eye).mT

    def _in_basis(self, A):
        """A U for rows A (b, m, n)."""
        if self.reflection is not None:
            A = self.reflection.of_rows(A)[..., :-1]
        return A @ self.vectors

    def _from_basis(self, A):
        """A U^T for rows A (b, m, r)."""
        A = A @ self.vectors.mT
        if self.reflection is not None:
            A = self.reflection.of_rows(torch.nn.functional.pad(A, (0, 1)))
        return A


class _SVDSpectrum:
    """Thin SVD of a batch of :class:`_Rows` by LAPACK, the decomposition scikit-matter
    uses; singular values in ascending order, as in :class:`_GramSpectrum`."""

    def __init__(self, data, centred=False):
        U, s, Vh = _svd(data.X)
        self.data, self.U, self.s, self.V = data, U.flip(-1), s.flip(-1), Vh.mT.flip(-1)
        self.s2, self.unresolved = self.s**2, torch.zeros_like(s[:, 0])

    def fold_products(self, other, weights=None):
        F = (other.X @ self.V) * self.s[:, None, :]
        return _scale_columns(self.U, weights).mT @ self.data.Y, F.mT @ other.Y, F.mT @ F

    def predict(self, Z, weights):
        scaled = _scale_columns((Z @ self.V) * self.s[:, None, :], weights)
        return scaled @ (self.U.mT @ self.data.Y)


def _scale_columns(A, weights):
    """A (b, m, r) with column j multiplied by weights[:, j]; A itself when weights is None."""
    return A if weights is None else A * weights[:, None, :]


class _MeanReflection:
    r"""The Householder reflection :math:`\mathbf{H} = \mathbf{I} - \beta\mathbf{v}\mathbf{v}^T`
    that maps :math:`\mathbf{1}/\sqrt{n}` to :math:`-\mathbf{e}_n`.

    Centred columns make :math:`\mathbf{1}/\sqrt{n}` a left singular vector of X with
    singular value 0. As :math:`\mathbf{X}\mathbf{X}^T\mathbf{1} = 0`, the last row
    and column of :math:`\mathbf{H}\mathbf{X}\mathbf{X}^T\mathbf{H}` vanish; the
    eigenvectors :math:`\tilde{\mathbf{U}}` of the rest give the other singular vectors,
    :math:`\mathbf{U} = \mathbf{H}[\tilde{\mathbf{U}}; \mathbf{0}]`.
    """

    def __init__(self, n, dtype, device):
        self.v = torch.full((n,), n**-0.5, dtype=dtype, device=device)
        self.v[-1] += 1
        self.beta = 2 / (self.v @ self.v)

    def of_gram(self, K):
        r""":math:`\mathbf{H}\mathbf{K}\mathbf{H} = \mathbf{K} - \mathbf{v}\mathbf{w}^T
        - \mathbf{w}\mathbf{v}^T` without its last row and column, with
        :math:`\mathbf{w} = \beta\mathbf{K}\mathbf{v} - \tfrac{\beta^2}{2}
        (\mathbf{v}^T\mathbf{K}\mathbf{v})\mathbf{v}`: (b, n - 1, n - 1)."""
        Kv = self.beta * (K @ self.v)
        w = Kv - (self.beta / 2) * (Kv @ self.v)[:, None] * self.v
        v = self.v.expand_as(w)
        reflected = torch.baddbmm(K, torch.stack([v, w], -1), torch.stack([w, v], 1), alpha=-1)
        return reflected[:, :-1, :-1]

    def of_rows(self, A):
        """A H for rows A (b, m, n)."""
        return A - (self.beta * (A @ self.v))[..., None] * self.v


def _eigh(A):
    """Eigenvalues (ascending) and eigenvectors of a batch of symmetric matrices."""
    return _batched_lapack(torch.linalg.eigh, A)


def _svd(A):
    """Thin SVD (U, s, Vh) of a batch of matrices."""
    return _batched_lapack(partial(torch.linalg.svd, full_matrices=False), A)


def _batched_lapack(function, A):
    """``function(A)`` for a batch of small matrices; on CPU, single-threaded LAPACK
    calls on slices of the batch run in parallel, one slice per torch thread.

    Threading inside each small LAPACK call gains little, and its busy-waiting threads
    slow it down a hundredfold when other processes share the cores.
    """
    if A.device.type != "cpu" or torch.get_num_threads() == 1 or len(A) == 1:
        return function(A)
    with _THREAD_COUNT_LOCK:  # the thread count is global: one caller at a time changes it
        n_threads = torch.get_num_threads()
        slices = A.tensor_split(min(n_threads, len(A)))
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(len(slices)) as pool:
                results = list(pool.map(function, slices))
        finally:
            torch.set_num_threads(n_threads)
    return tuple(torch.cat(parts) for parts in zip(*results))


@lru_cache(maxsize=64)
def _two_folds(n, random_state):
    """scikit-matter's folds: the first split of KFold(2, shuffle=True, random_state)."""
    return next(KFold(2, shuffle=True, random_state=random_state).split(np.empty((n, 1))))


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
    """LFRE^(i) for a batch: neighbours X_local (b, k, p), Y_local (b, k, q) in fold order,
    centred in place."""
    x_mean = X_local.mean(1, keepdim=True)  # \bar{x}^{(i)}
    y_mean = Y_local.mean(1, keepdim=True)  # \bar{y}^{(i)}
    y_tilde = y_mean + ridge.fit_predict(
        X_local.sub_(x_mean), Y_local.sub_(y_mean), x[:, None, :] - x_mean, centred=True
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


def root_mean_square(errors):
    """sqrt(mean(e_i^2)), computed as scikit-matter does: ||e|| / sqrt(n)."""
    return float(np.linalg.norm(errors) / np.sqrt(len(errors)))
