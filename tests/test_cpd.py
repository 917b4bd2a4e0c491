"""Composition Projection Decomposition: projection algebra, probe scores, errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from threadpoolctl import threadpool_limits

from mlipprobe.analysis.cpd import (
    composition_matrix,
    composition_residual,
    cpd_scores,
    make_probe,
)
from mlipprobe.analysis.cumulants import structure_cumulants

ELEMENTS = np.array([1, 6, 7, 8])


def structures(n_structures=300, seed=0):
    """Atomic numbers and structure index of molecules of 3..20 atoms, rows shuffled."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 21, n_structures)
    index = np.repeat(np.arange(n_structures), sizes)
    weights = rng.dirichlet(np.ones(len(ELEMENTS)), n_structures)  # varied compositions
    numbers = np.array([rng.choice(ELEMENTS, p=weights[s]) for s in index])
    rows = rng.permutation(len(index))
    return numbers[rows], index[rows]


def representation(C, n_features=12, noise=0.1, seed=1):
    """H = C W + noise: a compositional part and a 'geometric' part G."""
    rng = np.random.default_rng(seed)
    G = noise * rng.normal(size=(len(C), n_features))
    return 5.0 * C @ rng.normal(size=(C.shape[1], n_features)) + G, G


def least_squares_residual(H, C):
    """Independent reference: residual of the least-squares fit of H on [1, C]."""
    A = np.hstack([np.ones((len(C), 1)), C])
    return H - A @ np.linalg.lstsq(A, H, rcond=None)[0]


# --- composition matrix -----------------------------------------------------------


def test_composition_matrix_on_a_hand_made_example():
    numbers = np.array([8, 1, 1, 6, 1, 1, 1, 1])
    index = np.array([7, 7, 7, 3, 3, 3, 3, 3])  # water (7) and methane (3)
    C, elements = composition_matrix(numbers, index)
    np.testing.assert_array_equal(elements, [1, 6, 8])
    np.testing.assert_allclose(C, [[0.8, 0.2, 0.0], [2 / 3, 0.0, 1 / 3]])  # rows: 3, then 7
    counts, elements = composition_matrix(numbers, index, elements=[8, 6, 7, 1], kind="count")
    np.testing.assert_array_equal(elements, [8, 6, 7, 1])
    np.testing.assert_array_equal(counts, [[0, 1, 0, 4], [1, 0, 0, 2]])


def test_composition_rows_follow_the_cumulant_rows():
    numbers, index = structures(n_structures=20)
    _, from_cumulants = structure_cumulants(
        numbers[:, None].astype(float), index, 1, return_structures=True
    )
    C, _ = composition_matrix(numbers, index, kind="count")
    np.testing.assert_array_equal(C.sum(1), np.bincount(index)[from_cumulants])


# --- the projection ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fraction", "count"])
def test_residual_is_orthogonal_to_composition(kind):
    numbers, index = structures()
    C, _ = composition_matrix(numbers, index, kind=kind)
    H, _ = representation(C)
    H_res, H_comp = composition_residual(H, C)
    np.testing.assert_allclose(H_res + H_comp, H, atol=1e-12)
    assert np.abs(H_res.mean(0)).max() < 1e-12 * np.abs(H).max()
    assert np.abs(C.T @ H_res).max() < 1e-10 * np.abs(H).max() * len(H)
    np.testing.assert_allclose(H_res, least_squares_residual(H, C), atol=1e-10)


def test_residual_of_compositional_plus_noise_is_projected_noise():
    numbers, index = structures()
    C, _ = composition_matrix(numbers, index)
    H, G = representation(C)
    H_res, _ = composition_residual(H, C)
    np.testing.assert_allclose(H_res, least_squares_residual(G, C), atol=1e-10)


def test_rank_deficiency_is_handled():
    """Fractions sum to 1 (redundant with the intercept), and one element never occurs:
    same residual as with a full-rank basis of the same span."""
    numbers, index = structures()
    C, elements = composition_matrix(numbers, index, elements=[1, 6, 7, 8, 16])
    assert np.all(C[:, -1] == 0) and np.allclose(C.sum(1), 1)
    H, _ = representation(C)
    H_res, H_comp = composition_residual(H, C)
    assert np.isfinite(H_res).all()
    full_rank = C[:, :3]  # with the intercept, spans the same space as [1, C]
    np.testing.assert_allclose(H_res, composition_residual(H, full_rank)[0], atol=1e-10)
    np.testing.assert_allclose(H_comp, composition_residual(H, full_rank)[1], atol=1e-10)


def test_columns_in_the_span_give_exactly_zero_residual():
    numbers, index = structures()
    C, _ = composition_matrix(numbers, index)
    H, _ = representation(C)
    H = np.hstack([H, np.full((len(H), 1), 3.7), 2.0 * C[:, :1] - 1.0])
    H_res, _ = composition_residual(H, C)
    np.testing.assert_array_equal(H_res[:, -2:], 0.0)
    assert np.all(np.abs(H_res[:, :-2]).max(0) > 0.01)


def test_projection_fitted_on_training_rows():
    numbers, index = structures()
    C, _ = composition_matrix(numbers, index)
    H, _ = representation(C)
    H_res, H_comp = composition_residual(H, C, train_idx=np.arange(len(H)))
    np.testing.assert_allclose(H_res, composition_residual(H, C)[0], atol=1e-10)
    train = np.arange(0, len(H), 3)
    H_res, H_comp = composition_residual(H, C, train_idx=train)
    np.testing.assert_allclose(H_res + H_comp, H, atol=1e-12)
    reference = least_squares_residual(H[train], C[train])
    np.testing.assert_allclose(H_res[train], reference, atol=1e-10)
    assert np.abs(H_res.mean(0)).max() > 1e-6  # other rows: not orthogonal any more


# --- probe scores -----------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset():
    numbers, index = structures()
    C, _ = composition_matrix(numbers, index)
    H, G = representation(C, noise=0.3)
    return H, C, G


def test_compositional_target_has_no_geometric_score(dataset):
    H, C, _ = dataset
    y = C @ np.array([1.0, -2.0, 3.0, 0.5])
    scores = cpd_scores(H, C, y, probes=("ridge",), cv=3)
    assert scores["ridge/r2_full"] > 0.99
    assert scores["ridge/r2_comp"] > 0.99
    assert scores["ridge/r2_geom"] < 0.05
    assert set(scores) == {
        f"ridge/r2_{part}{std}" for part in ("full", "comp", "geom") for std in ("", "_std")
    } | {"composition/variance_fraction"}
    assert 0.9 < scores["composition/variance_fraction"] < 1.0


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("projection", ["global", "fold"])
def test_geometric_target_has_a_high_geometric_score(dataset, projection):
    H, C, G = dataset
    y = G @ np.random.default_rng(2).normal(size=G.shape[1])
    scores = cpd_scores(H, C, y, cv=3, projection=projection)
    assert scores["ridge/r2_geom"] > 0.95
    assert scores["mlp/r2_geom"] > 0.8
    assert scores["ridge/r2_comp"] < 0.05
    assert scores["ridge/r2_geom"] >= scores["ridge/r2_full"] - 0.02


def test_trees_warn_and_read_composition_from_the_residual():
    """Steier's finding: nonlinear composition encoding survives the linear projection."""
    numbers, index = structures(n_structures=400, seed=3)
    C, _ = composition_matrix(numbers, index)
    rng = np.random.default_rng(4)
    H = np.tanh(3 * C @ rng.normal(size=(4, 8))) + 0.01 * rng.normal(size=(len(C), 8))
    y = np.tanh(3 * C @ rng.normal(size=4))  # compositional, nonlinear
    # one OpenMP thread: many tiny parallel regions crawl on a busy 2-core machine
    with threadpool_limits(1, user_api="openmp"):
        with pytest.warns(UserWarning, match="trees inflate residual scores"):
            scores = cpd_scores(H, C, y, probes=("ridge", "gbt"), cv=3)
    assert scores["gbt/r2_geom"] > scores["ridge/r2_geom"] + 0.2


def test_custom_estimators_are_cloned(dataset):
    H, C, G = dataset
    estimator = LinearRegression()
    scores = cpd_scores(H, C, G[:, 0], probes=[("ols", estimator)], cv=3)
    assert scores["ols/r2_geom"] > 0.99
    assert not hasattr(estimator, "coef_")


# --- error messages ---------------------------------------------------------------


def test_errors_name_the_shapes():
    H, C = np.zeros((10, 3)), np.full((9, 2), 0.5)
    with pytest.raises(ValueError, match=r"H has shape \(10, 3\), C has shape \(9, 2\)"):
        composition_residual(H, C)
    with pytest.raises(ValueError, match=r"H has shape \(10, 3\), C has shape \(9, 2\)"):
        cpd_scores(H, C, np.zeros(10))
    with pytest.raises(ValueError, match=r"y must have shape \(10,\).*got shape \(8,\)"):
        cpd_scores(H, np.zeros((10, 2)), np.zeros(8))
    with pytest.raises(ValueError, match=r"H must be 2-D .*got shape \(10,\)"):
        composition_residual(np.zeros(10), C)
    with pytest.raises(ValueError, match=r"structure_index must have shape \(3,\).*\(2,\)"):
        composition_matrix([1, 1, 8], [0, 0])
    with pytest.raises(ValueError, match=r"atomic numbers \[8\] occur .* not in elements"):
        composition_matrix([1, 1, 8], [0, 0, 0], elements=[1, 6])
    with pytest.raises(ValueError, match="kind must be 'fraction' or 'count'"):
        composition_matrix([1], [0], kind="percent")
    with pytest.raises(ValueError, match="projection must be 'global' or 'fold'"):
        cpd_scores(H, np.zeros((10, 2)), np.zeros(10), projection="train")
    with pytest.raises(ValueError, match="unknown probe 'svm'"):
        make_probe("svm")
