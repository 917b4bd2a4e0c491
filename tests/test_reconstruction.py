"""GFRE/LFRE: agreement with scikit-matter, mathematical properties, error messages."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from skmatter.linear_model import Ridge2FoldCV
from skmatter.metrics import (
    global_reconstruction_error,
    local_reconstruction_error,
    pointwise_global_reconstruction_error,
    pointwise_local_reconstruction_error,
)
from skmatter.metrics._reconstruction_measures import check_global_reconstruction_measures_input
from skmatter.preprocessing import StandardFlexibleScaler

from mlipprobe.analysis import (
    DEFAULT_RANDOM_STATE,
    gfre,
    lfre,
    pointwise_gfre,
    pointwise_lfre,
    reconstruction_split,
)
from mlipprobe.analysis.reconstruction import (
    _eigh,
    _GramSpectrum,
    _Ridge2FoldCV,
    _Rows,
    _SVDSpectrum,
)

RTOL = 1e-6  # observed agreement is ~1e-11 or better


def features(n_samples, dim_x, dim_y, seed=0):
    """X with correlated columns; Y a nonlinear function of X plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, dim_x)) @ rng.normal(size=(dim_x, dim_x))
    Y = np.tanh(X @ rng.normal(size=(dim_x, dim_y)) / dim_x) + 0.05 * rng.normal(
        size=(n_samples, dim_y)
    )
    return X, Y


def random_rotation(dim, seed=1):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


SHAPES = [(120, 6, 15), (140, 18, 5), (100, 8, 8)]


# --- agreement with scikit-matter --------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_gfre_matches_skmatter_default_split(shape):
    X, Y = features(*shape)
    assert gfre(X, Y) == pytest.approx(global_reconstruction_error(X, Y), rel=RTOL)
    np.testing.assert_allclose(
        pointwise_gfre(X, Y), pointwise_global_reconstruction_error(X, Y), rtol=RTOL
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_lfre_matches_skmatter_default_split(shape):
    X, Y = features(*shape)
    k = min(shape[1:]) + 4
    assert lfre(X, Y, k) == pytest.approx(local_reconstruction_error(X, Y, k), rel=RTOL)
    np.testing.assert_allclose(
        pointwise_lfre(X, Y, k), pointwise_local_reconstruction_error(X, Y, k), rtol=RTOL
    )


@pytest.mark.parametrize(
    "split",
    [
        dict(train_idx=np.arange(0, 150, 2), test_idx=np.arange(1, 150, 2)),
        dict(train_idx=np.arange(40, 150)),
        dict(test_idx=np.array([5, 3, 90, 17, 64, 120, 33])),
    ],
    ids=["both", "train-only", "test-only"],
)
def test_explicit_splits_match_skmatter(split):
    X, Y = features(150, 12, 20, seed=3)
    np.testing.assert_allclose(
        pointwise_gfre(X, Y, **split),
        pointwise_global_reconstruction_error(X, Y, **split),
        rtol=RTOL,
    )
    np.testing.assert_allclose(
        pointwise_lfre(X, Y, 15, **split),
        pointwise_local_reconstruction_error(X, Y, 15, **split),
        rtol=RTOL,
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(regularization_method="tikhonov"),
        dict(alpha_type="absolute", alphas=(1e-6, 1e-3, 1e-1, 1.0, 10.0)),
        dict(random_state=7, alphas=(1e-4, 1e-2, 0.5)),
    ],
)
def test_ridge_options_match_skmatter(options):
    X, Y = features(130, 10, 14, seed=4)
    estimator = Ridge2FoldCV(
        alphas=np.asarray(options.get("alphas", np.geomspace(1e-9, 0.9, 20))),
        alpha_type=options.get("alpha_type", "relative"),
        regularization_method=options.get("regularization_method", "cutoff"),
        random_state=options.get("random_state", DEFAULT_RANDOM_STATE),
        shuffle=True,
        scoring="neg_root_mean_squared_error",
    )
    split = dict(train_idx=np.arange(90), test_idx=np.arange(90, 130))
    np.testing.assert_allclose(
        pointwise_gfre(X, Y, **split, **options),
        pointwise_global_reconstruction_error(X, Y, **split, estimator=estimator),
        rtol=RTOL,
    )
    np.testing.assert_allclose(
        pointwise_lfre(X, Y, 16, **split, **options),
        pointwise_local_reconstruction_error(X, Y, 16, **split, estimator=estimator),
        rtol=RTOL,
    )


def test_unscaled_matches_skmatter_identity_scaler():
    X, Y = features(110, 7, 9, seed=5)
    identity = StandardFlexibleScaler(with_mean=False, with_std=False)
    np.testing.assert_allclose(
        pointwise_gfre(X, Y, scaler=False),
        pointwise_global_reconstruction_error(X, Y, scaler=identity),
        rtol=RTOL,
    )
    np.testing.assert_allclose(
        pointwise_lfre(X, Y, 12, scaler=False),
        pointwise_local_reconstruction_error(X, Y, 12, scaler=identity),
        rtol=RTOL,
    )


def test_default_split_is_skmatters():
    train, test, _, _ = check_global_reconstruction_measures_input(
        np.zeros((57, 1)), np.zeros((57, 1)), None, None, None, None
    )
    ours_train, ours_test = reconstruction_split(57)
    np.testing.assert_array_equal(ours_train, train)
    np.testing.assert_array_equal(ours_test, test)


# --- inputs, batching, types -------------------------------------------------------


def test_torch_inputs_and_batching_give_the_same_errors():
    X, Y = features(160, 9, 11, seed=6)
    reference = pointwise_lfre(X, Y, 14)
    from_torch = pointwise_lfre(torch.from_numpy(X), torch.from_numpy(Y), 14, batch_size=7)
    assert isinstance(from_torch, np.ndarray) and from_torch.shape == (80,)
    np.testing.assert_allclose(from_torch, reference, rtol=1e-12)
    train, test = torch.arange(100), torch.arange(100, 160)
    expected = gfre(X, Y, train_idx=train.numpy(), test_idx=test.numpy())
    assert gfre(X, Y, train_idx=train, test_idx=test) == pytest.approx(expected, rel=1e-12)


def test_default_n_local_points_is_min_dimension():
    """The paper's k = min(dim X, dim Y): a rank-deficient centred neighbourhood."""
    X, Y = features(100, 6, 10, seed=7)
    assert lfre(X, Y) == lfre(X, Y, 6)
    assert lfre(X, Y) == pytest.approx(local_reconstruction_error(X, Y, 6), rel=RTOL)


def test_float32_is_close_to_float64():
    X, Y = features(200, 10, 20, seed=13)
    assert gfre(X, Y, dtype=torch.float32) == pytest.approx(gfre(X, Y), rel=1e-4)
    assert lfre(X, Y, dtype=torch.float32) == pytest.approx(lfre(X, Y), rel=1e-4)


def test_aggregates_are_root_mean_squares():
    X, Y = features(100, 6, 10, seed=8)
    value = gfre(X, Y)
    assert isinstance(value, float)
    assert value == pytest.approx(np.sqrt(np.mean(pointwise_gfre(X, Y) ** 2)))
    assert lfre(X, Y, 8) == pytest.approx(np.sqrt(np.mean(pointwise_lfre(X, Y, 8) ** 2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    X, Y = features(200, 12, 16, seed=9)
    assert gfre(X, Y, device="cuda") == pytest.approx(gfre(X, Y), rel=1e-8)
    assert lfre(X, Y, 14, device="cuda") == pytest.approx(lfre(X, Y, 14), rel=1e-8)


# --- mathematical properties -------------------------------------------------------


def test_identity_rotation_and_duplication_reconstruct_perfectly():
    X, _ = features(200, 10, 1, seed=10)
    assert gfre(X, X) < 1e-8
    assert gfre(X, X @ random_rotation(10)) < 1e-8
    assert gfre(X, np.hstack([X, X])) < 1e-8
    assert lfre(X, X, 15) < 1e-8
    assert lfre(X, X @ random_rotation(10), 15) < 1e-8


def test_reconstruction_is_asymmetric():
    """A projection is reconstructed from the full features, not the reverse."""
    X, _ = features(200, 10, 1, seed=11)
    projection = X[:, :2]
    assert gfre(X, projection) < 1e-8
    assert gfre(projection, X) > 0.5


def test_unrelated_features_give_error_near_one():
    rng = np.random.default_rng(12)
    X, Y = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    assert 0.9 < gfre(X, Y) < 1.1


# --- the Gram-matrix solver and its SVD fallback ---------------------------------------


def local_problems(batch, n, p, q, seed=20):
    """A batch of centred neighbourhood-like problems: X (b, n, p), Y (b, n, q), x (b, 1, p)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(batch, n, p)) @ rng.normal(size=(batch, p, p))
    Y = np.tanh(X @ rng.normal(size=(batch, p, q)) / p) + 0.05 * rng.normal(size=(batch, n, q))
    X, Y = (torch.from_numpy(A - A.mean(1, keepdims=True)) for A in (X, Y))
    return X, Y, torch.from_numpy(rng.normal(size=(batch, 1, p)))


@pytest.mark.parametrize("shape", [(16, 20), (24, 10)], ids=["rows", "columns"])
@pytest.mark.parametrize("method", ["cutoff", "tikhonov"])
def test_gram_spectra_fit_like_svds(shape, method):
    """The fast path (Gram eigenvectors, all alphas at once) is the SVD path, batch-wise."""
    n, p = shape
    X, Y, x = local_problems(6, n, p, 7)
    ridge = _Ridge2FoldCV.from_options(None, "relative", method, DEFAULT_RANDOM_STATE)
    args = (len(ridge.fold_order(n)) // 2, n * 2.2e-16, True)
    gram, unresolved = ridge._fit_predict(X, Y, x, *args, _GramSpectrum)
    svd, _ = ridge._fit_predict(X, Y, x, *args, _SVDSpectrum)
    assert not unresolved.any()
    np.testing.assert_allclose(gram.numpy(), svd.numpy(), rtol=1e-9, atol=1e-12)


def test_centring_null_direction_is_removed_exactly():
    """A centred neighbourhood with k <= p has an exact zero singular value: the Gram
    spectrum drops it instead of reporting it as unresolved."""
    X, _, _ = local_problems(3, 12, 20, 1)
    plain, deflated = _GramSpectrum(_Rows(X)), _GramSpectrum(_Rows(X), centred=True)
    assert (plain.unresolved > 0).all() and (deflated.unresolved == 0).all()
    svdvals = torch.linalg.svdvals(X)[:, :-1].flip(-1)
    np.testing.assert_allclose(deflated.s2.sqrt().numpy(), svdvals.numpy(), rtol=1e-10)
    U = deflated.left_vectors()
    np.testing.assert_allclose((U.mT @ U).numpy(), np.tile(np.eye(11), (3, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(U.sum(1).numpy(), 0, atol=1e-12)  # orthogonal to the constant


def tiny_direction_features(n_samples, dim, scale=1e-6, seed=21):
    """X with one direction of tiny variance that Y depends on: only a ridge keeping
    the matching tiny singular value reconstructs Y."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n_samples, dim))
    X = Z * np.r_[np.ones(dim - 1), scale]
    return X, Z[:, [-1, 0, 1]] + 1e-3 * rng.normal(size=(n_samples, 3))


def test_unresolved_spectra_fall_back_to_svds(monkeypatch):
    X, Y = tiny_direction_features(120, 8)
    spectrum = _GramSpectrum(_Rows(torch.from_numpy(X)[None]))
    tiny = float(np.linalg.svd(X, compute_uv=False)[-1])
    assert float(spectrum.unresolved[0]) >= tiny  # an upper bound on what it cannot resolve
    refitted = []
    svd_init = _SVDSpectrum.__init__
    monkeypatch.setattr(
        _SVDSpectrum,
        "__init__",
        lambda self, data, *a: refitted.append(len(data.X)) or svd_init(self, data, *a),
    )
    assert gfre(X, Y) < 0.01 and refitted  # the tiny direction is used, through SVDs...
    np.testing.assert_allclose(  # ...as scikit-matter does
        pointwise_gfre(X, Y), pointwise_global_reconstruction_error(X, Y), rtol=RTOL
    )
    refitted.clear()
    np.testing.assert_allclose(
        pointwise_lfre(X, Y, 8), pointwise_local_reconstruction_error(X, Y, 8), rtol=RTOL
    )
    assert refitted


def test_duplicated_columns_match_skmatter():
    """Rank-deficient X: the Gram matrices have exact zero eigenvalues."""
    X, Y = features(120, 5, 7, seed=22)
    X = np.hstack([X, X])
    np.testing.assert_allclose(
        pointwise_gfre(X, Y), pointwise_global_reconstruction_error(X, Y), rtol=RTOL
    )
    np.testing.assert_allclose(
        pointwise_lfre(X, Y, 9), pointwise_local_reconstruction_error(X, Y, 9), rtol=RTOL
    )


def test_batched_eigendecomposition_restores_the_thread_count():
    """Even with callers in several threads: the slices run with one torch thread each."""
    A = torch.randn(9, 5, 5, dtype=torch.float64)
    A = A @ A.mT
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(_eigh, [A] * 8))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    values, vectors = results[-1]
    assert all(torch.equal(values, other[0]) for other in results)
    expected = torch.linalg.eigh(A)
    np.testing.assert_allclose(values.numpy(), expected.eigenvalues.numpy(), rtol=1e-12)
    reconstructed = vectors @ torch.diag_embed(values) @ vectors.mT
    np.testing.assert_allclose(reconstructed.numpy(), A.numpy(), rtol=1e-10, atol=1e-12)


# --- error messages ----------------------------------------------------------------


def test_mismatched_rows_name_both_shapes():
    X, Y = features(50, 4, 6)
    with pytest.raises(ValueError, match=r"X has shape \(50, 4\), Y has shape \(49, 6\)"):
        gfre(X, Y[:49])
    with pytest.raises(ValueError, match=r"X has shape \(50, 4\), Y has shape \(49, 6\)"):
        lfre(X, Y[:49], 5)


@pytest.mark.parametrize("name", ["X", "Y"])
def test_nan_is_rejected(name):
    X, Y = features(50, 4, 6)
    (X if name == "X" else Y)[3, 1] = np.nan
    with pytest.raises(ValueError, match=f"{name} contains NaN or infinite values"):
        gfre(X, Y)


@pytest.mark.parametrize("k", [26, 1])
def test_n_local_points_outside_training_set_is_rejected(k):
    X, Y = features(50, 4, 6)
    with pytest.raises(
        ValueError,
        match=rf"n_local_points={k} must lie between 2 and the number of training points \(25\)",
    ):
        lfre(X, Y, k)


def test_other_bad_inputs_are_rejected():
    X, Y = features(50, 4, 6)
    with pytest.raises(ValueError, match=r"X must be 2-D .* got shape \(50,\)"):
        gfre(X[:, 0], Y)
    with pytest.raises(ValueError, match="Y has \\(almost\\) zero total variance"):
        gfre(X, np.ones_like(Y))
    with pytest.raises(ValueError, match="train_idx has indices outside"):
        gfre(X, Y, train_idx=[0, 1, 50])
    with pytest.raises(ValueError, match="alphas must be"):
        gfre(X, Y, alphas=(0.1, 1.5))
    with pytest.raises(ValueError, match="regularization_method must be"):
        gfre(X, Y, regularization_method="lasso")
