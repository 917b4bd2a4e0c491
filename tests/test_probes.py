"""Lightning probes and reconstruction heads against closed forms and known relations."""

from __future__ import annotations

import numpy as np
import pytest

from mlipprobe.analysis import gfre, structure_cumulants
from mlipprobe.probes import learning_curve, pool_features, probe_scores, reconstruction_error


@pytest.fixture(scope="module")
def nonlinear_pair():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 16))
    Y = np.tanh(X @ rng.normal(size=(16, 24)) / 2) + 0.05 * rng.normal(size=(2000, 24))
    return X, Y


def test_linear_head_gives_the_gfre_within_two_percent(nonlinear_pair):
    X, Y = nonlinear_pair
    closed_form = gfre(X, Y)
    assert closed_form > 0.1
    assert reconstruction_error(X, Y) == pytest.approx(closed_form, rel=0.02)


@pytest.mark.slow  # ~40 s of MLP training on 2 cores; `make test-all` runs it
def test_mlp_head_reconstructs_what_a_linear_map_cannot():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 3))
    Y = np.column_stack([X[:, 0] ** 2, X[:, 1] * X[:, 2], np.abs(X[:, 2])])
    linear = reconstruction_error(X, Y)
    nonlinear = reconstruction_error(X, Y, hidden=[64], lr=3e-3, patience=30)
    assert linear > 0.8 and nonlinear < 0.5 * linear


def test_identity_reconstruction_is_close_to_zero(nonlinear_pair):
    X, _ = nonlinear_pair
    assert reconstruction_error(X, X) < 0.02


def test_probe_scores_are_cross_validated_and_in_target_units():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 6))
    y = 100.0 * (X @ rng.normal(size=6)) + 5.0
    scores = probe_scores(X, y, n_splits=3)
    assert set(scores) == {f"{m}_{s}" for m in ("r2", "mae", "rmse") for s in ("mean", "std")}
    assert scores["r2_mean"] > 0.99
    assert scores["mae_mean"] < 0.1 * np.std(y)


@pytest.mark.slow  # ~60 s of k-fold MLP training on 2 cores; `make test-all` runs it
def test_mlp_probe_beats_the_linear_probe_on_a_nonlinear_target():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1200, 2))
    y = np.sin(2 * X[:, 0]) + X[:, 1] ** 2
    linear = probe_scores(X, y, n_splits=3)["r2_mean"]
    mlp = probe_scores(X, y, hidden=[64], n_splits=3)["r2_mean"]
    assert linear < 0.3 and mlp > linear + 0.4


def test_learning_curve_improves_with_more_data():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(800, 20))
    y = X @ rng.normal(size=20) + 0.5 * rng.normal(size=800)
    curve = learning_curve(X, y, train_sizes=(0.05, 1.0))
    assert [point["n_train"] for point in curve] == [32, 640]
    assert curve[1]["mae"] < curve[0]["mae"]


def test_pooling_matches_numpy_and_cumulants():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(30, 4))
    index = np.repeat([7, 2, 5], 10)
    mean, structures = pool_features(features, index, "mean")
    np.testing.assert_array_equal(structures, [2, 5, 7])
    np.testing.assert_allclose(mean[0], features[10:20].mean(0))
    total, _ = pool_features(features, index, "sum")
    np.testing.assert_allclose(total[2], features[:10].sum(0))
    cumulants, _ = pool_features(features, index, "cumulant3")
    np.testing.assert_allclose(cumulants, structure_cumulants(features, index, 3))
    with pytest.raises(ValueError, match="pooling must be"):
        pool_features(features, index, "max")


def test_mismatched_rows_are_named():
    with pytest.raises(ValueError, match=r"X has shape \(10, 2\) but y has shape \(9,\)"):
        probe_scores(np.zeros((10, 2)), np.zeros(9))
    with pytest.raises(ValueError, match=r"X has shape \(10, 2\), Y has shape \(9, 2\)"):
        reconstruction_error(np.zeros((10, 2)), np.zeros((9, 2)))


def test_vector_probe_is_equivariant_and_recovers_a_channel_combination():
    from scipy.spatial.transform import Rotation

    from mlipprobe.probes import vector_probe_scores

    rng = np.random.default_rng(6)
    n_structures, atoms_each, mul = 200, 6, 4
    index = np.repeat(np.arange(n_structures), atoms_each)
    vectors = rng.normal(size=(len(index), mul, 3))
    weights = np.array([1.5, -0.5, 0.0, 2.0])
    target = np.einsum("c,sack->sk", weights, vectors.reshape(n_structures, atoms_each, mul, 3))
    scores = vector_probe_scores(vectors.reshape(len(index), -1), index, target, n_splits=3)
    assert scores["r2_mean"] > 0.999
    rotation = Rotation.from_euler("xyz", [0.4, -1.0, 2.0]).as_matrix()
    rotated = vector_probe_scores((vectors @ rotation.T).reshape(len(index), -1), index, target @ rotation.T, n_splits=3)
    assert rotated["r2_mean"] == pytest.approx(scores["r2_mean"], abs=1e-9)
    with pytest.raises(ValueError, match=r"mul \* 3"):
        vector_probe_scores(np.zeros((12, 4)), index[:12], np.zeros((2, 3)))
