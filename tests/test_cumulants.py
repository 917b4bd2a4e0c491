"""Structure cumulants: reference formulas, invariances, progressive information."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import moment

from mlipprobe.analysis import cumulants as cumulants_module
from mlipprobe.analysis import gfre
from mlipprobe.analysis.cumulants import (
    cumulant_block,
    cumulant_blocks,
    cumulants_from_central_moments,
    signed_root,
    structure_cumulants,
)


def atoms(n_structures=40, n_features=3, max_atoms=12, seed=0):
    """Skewed per-atom features of structures of 1..max_atoms atoms, rows shuffled."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_atoms + 1, n_structures)
    labels = rng.choice(10 * n_structures, n_structures, replace=False)  # not contiguous
    index = np.repeat(labels, sizes)
    shift = rng.normal(size=(n_structures, n_features))
    scale = rng.uniform(0.5, 2.0, size=(n_structures, n_features))
    features = np.repeat(shift, sizes, 0) + np.repeat(scale, sizes, 0) * rng.gamma(
        rng.uniform(0.5, 3.0, size=(n_features,)), size=(sizes.sum(), n_features)
    )
    rows = rng.permutation(len(index))
    return features[rows], index[rows]


def reference_cumulants(x):
    """kappa_1..kappa_6 of one structure (n_atoms, n_features) from explicit formulas."""
    mu = {k: moment(x, k, axis=0) for k in range(2, 7)}
    return [
        x.mean(0),
        np.var(x, axis=0),
        mu[3],
        mu[4] - 3 * mu[2] ** 2,
        mu[5] - 10 * mu[2] * mu[3],
        mu[6] - 15 * mu[4] * mu[2] - 10 * mu[3] ** 2 + 30 * mu[2] ** 3,
    ]


def reference_descriptor(features, index, order):
    """Per-structure loop: the definition, one structure at a time."""
    rows = []
    for label in np.unique(index):
        kappa = reference_cumulants(features[index == label])[:order]
        roots = [np.sign(c) * np.abs(c) ** (1 / k) for k, c in enumerate(kappa, 1)]
        rows.append(np.concatenate(roots))
    return np.array(rows)


# --- agreement with the definition -------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6])
def test_matches_per_structure_loop(order):
    features, index = atoms()
    descriptor, structures = structure_cumulants(features, index, order, return_structures=True)
    np.testing.assert_array_equal(structures, np.unique(index))
    assert descriptor.shape == (len(structures), 3 * order)
    assert descriptor.dtype == np.float64
    np.testing.assert_allclose(
        descriptor, reference_descriptor(features, index, order), rtol=1e-9, atol=1e-12
    )


def test_recursion_reproduces_orders_7_and_8():
    # coefficients of t^n/n! in log(1 + sum_k mu_k t^k/k!), expanded with sympy; the
    # paper's script (calculate_cumulant.py) swaps 420 and 560 in its kappa_8.
    mu = np.random.default_rng(1).normal(size=(8, 5))
    m2, m3, m4, m5, m6, m7, m8 = mu[1:]
    kappa = cumulants_from_central_moments(mu)
    np.testing.assert_allclose(kappa[6], m7 - 21 * m2 * m5 - 35 * m3 * m4 + 210 * m2**2 * m3)
    np.testing.assert_allclose(
        kappa[7],
        m8 - 28 * m2 * m6 - 56 * m3 * m5 - 35 * m4**2 + 560 * m2 * m3**2
        + 420 * m2**2 * m4 - 630 * m2**4,
    )


def test_signed_root_on_hand_made_structures():
    # values (0, 0, 3): mean 1, deviations (-1, -1, 2): mu2 = 2, mu3 = 2, mu4 = 6,
    # kappa4 = 6 - 3 * 2**2 = -6; the mirror image (0, 0, -3) flips odd orders.
    features = np.array([[0.0], [0.0], [3.0], [0.0], [0.0], [-3.0]])
    index = np.array([0, 0, 0, 1, 1, 1])
    expected = np.array(
        [
            [1.0, np.sqrt(2), 2 ** (1 / 3), -(6 ** (1 / 4))],
            [-1.0, np.sqrt(2), -(2 ** (1 / 3)), -(6 ** (1 / 4))],
        ]
    )
    np.testing.assert_allclose(structure_cumulants(features, index, 4), expected, rtol=1e-13)
    assert signed_root(-8.0, 3) == pytest.approx(-2.0)
    assert signed_root(-8.0, 1) == -8.0


# --- mathematical properties ------------------------------------------------------


def test_single_atom_structures_have_zero_higher_orders():
    features = np.random.default_rng(2).normal(size=(5, 4))
    descriptor = structure_cumulants(features, np.arange(5), 6)
    np.testing.assert_array_equal(descriptor[:, :4], features)
    np.testing.assert_array_equal(descriptor[:, 4:], 0.0)


def test_gaussian_atoms_have_vanishing_third_and_fourth_cumulants():
    n_atoms = 200_000
    features = 2.0 + 3.0 * np.random.default_rng(3).normal(size=(n_atoms, 2))
    kappa = cumulant_blocks(structure_cumulants(features, np.zeros(n_atoms, int), 4), 2)
    np.testing.assert_allclose(kappa[0], 2.0, atol=5 * 3 / np.sqrt(n_atoms))
    np.testing.assert_allclose(kappa[1] ** 2, 9.0, rtol=5 * np.sqrt(2 / n_atoms))
    # sampling standard deviations of kappa_3 and kappa_4: sqrt(6/n) s^3, sqrt(24/n) s^4
    assert np.all(np.abs(kappa[2] ** 3) < 5 * np.sqrt(6 / n_atoms) * 27)
    assert np.all(np.abs(kappa[3] ** 4) < 5 * np.sqrt(24 / n_atoms) * 81)


def test_row_order_does_not_matter():
    features, index = atoms(seed=4)
    rows = np.random.default_rng(5).permutation(len(index))
    np.testing.assert_allclose(
        structure_cumulants(features[rows], index[rows], 6),
        structure_cumulants(features, index, 6),
        rtol=1e-12,
        atol=1e-14,
    )


def test_column_blocks_do_not_change_the_result(monkeypatch):
    features, index = atoms(n_features=7, seed=6)
    expected = structure_cumulants(features, index, 5)
    monkeypatch.setattr(cumulants_module, "_BLOCK_ELEMENTS", 2 * len(features))
    np.testing.assert_array_equal(structure_cumulants(features, index, 5), expected)


def test_torch_input_gives_the_same_descriptor():
    features, index = atoms(seed=7)
    np.testing.assert_array_equal(
        structure_cumulants(torch.from_numpy(features).float(), torch.from_numpy(index), 3),
        structure_cumulants(features.astype(np.float32), index, 3),
    )


def test_higher_orders_contain_lower_orders():
    features, index = atoms(seed=8)
    previous = structure_cumulants(features, index, 1)
    for order in range(2, 7):
        descriptor = structure_cumulants(features, index, order)
        np.testing.assert_array_equal(descriptor[:, : previous.shape[1]], previous)
        np.testing.assert_array_equal(
            cumulant_block(descriptor, 3, order - 1), cumulant_block(previous, 3, order - 1)
        )
        previous = descriptor
    blocks = cumulant_blocks(previous, 3)
    assert len(blocks) == 6
    np.testing.assert_array_equal(np.hstack(blocks), previous)


def test_lower_order_is_reconstructed_from_higher_order_not_conversely():
    features, index = atoms(n_structures=300, n_features=4, seed=9)
    order1 = structure_cumulants(features, index, 1)
    order3 = structure_cumulants(features, index, 3)
    assert gfre(order3, order1) < 1e-6
    assert gfre(order1, order3) > 0.1


# --- error messages ---------------------------------------------------------------


def test_errors_name_the_shapes():
    features = np.zeros((6, 2))
    with pytest.raises(ValueError, match=r"structure_index must have shape \(6,\).*\(5,\)"):
        structure_cumulants(features, np.zeros(5, int), 2)
    with pytest.raises(ValueError, match=r"features must be 2-D .*got shape \(6,\)"):
        structure_cumulants(np.zeros(6), np.zeros(6, int), 2)
    with pytest.raises(ValueError, match="order must be a positive integer, got 0"):
        structure_cumulants(features, np.zeros(6, int), 0)
    with pytest.raises(ValueError, match="structure_index must hold integers"):
        structure_cumulants(features, np.zeros(6), 2)
    with pytest.raises(ValueError, match="order must lie between 1 and 2"):
        cumulant_block(np.zeros((3, 4)), 2, 3)
    with pytest.raises(ValueError, match="not a positive multiple of n_features=3"):
        cumulant_blocks(np.zeros((3, 4)), 3)
