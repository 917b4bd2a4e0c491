r"""Structure-level descriptors: progressive cumulants of per-atom features.

A structure :math:`A` with atoms :math:`i \in A` and per-atom features
:math:`x_{ij}` (feature :math:`j`) is described, feature by feature, by the cumulants
of the empirical distribution of its atoms' values [Chorna2025]_: the mean, then the
variance, skewness-like and kurtosis-like terms, each taken to the power
:math:`1/k` so that every order has the units of the features. The descriptor of
order :math:`K` concatenates orders :math:`1, \dots, K`; each order adds information
about the distribution of atomic environments in the structure, while the
lower-order descriptor remains (exactly) its leading columns.

Rows are grouped by an integer structure index in any order; output rows follow the
sorted unique indices (``numpy.unique``), the same order as
:func:`mlipprobe.analysis.cpd.composition_matrix`.

References
----------
.. [Chorna2025] S. Chorna, D. Tisi, C. Malosso, W. B. How, M. Ceriotti, S. Chong,
   "Comparing the latent features of universal machine-learning interatomic
   potentials", arXiv:2512.05717 (2025).
.. [Smith1995] P. J. Smith, "A recursive formulation of the old problem of obtaining
   moments from cumulants and vice versa", Am. Stat. 49, 217-218 (1995).
"""

from __future__ import annotations

from math import comb

import numpy as np
import torch

__all__ = [
    "cumulant_block",
    "cumulant_blocks",
    "cumulants_from_central_moments",
    "signed_root",
    "structure_cumulants",
]

#: Elements per temporary (n_atoms, block) array: columns are processed in blocks
#: so that peak memory stays ~4 x 128 MiB whatever the number of features.
_BLOCK_ELEMENTS = 2**24


def structure_cumulants(features, structure_index, order, *, return_structures=False):
    r"""Progressive-cumulant descriptor of each structure.

    .. math::
        \mathbf{d}_A^{(K)} = \bigl[\kappa_{1,A},\ \phi_2(\kappa_{2,A}),\ \dots,\
        \phi_K(\kappa_{K,A})\bigr], \qquad
        \phi_k(\kappa) = \operatorname{sign}(\kappa)\,\lvert\kappa\rvert^{1/k}

    where, for every feature column, :math:`\kappa_{k,A}` is the :math:`k`-th
    cumulant of the values of the atoms of structure :math:`A` (population, not
    unbiased, estimates; :func:`cumulants_from_central_moments`):

    .. math::
        \kappa_1 = \bar{x}, \quad \kappa_2 = \mu_2, \quad \kappa_3 = \mu_3, \quad
        \kappa_4 = \mu_4 - 3\mu_2^2, \quad \kappa_5 = \mu_5 - 10\mu_2\mu_3,

    .. math::
        \kappa_6 = \mu_6 - 15\mu_4\mu_2 - 10\mu_3^2 + 30\mu_2^3, \qquad
        \mu_k = \frac{1}{n_A}\sum_{i \in A} (x_i - \bar{x})^k .

    Structures with a single atom have :math:`\kappa_k = 0` for :math:`k \ge 2`.

    Parameters
    ----------
    features : array-like or torch.Tensor of shape (n_atoms, n_features)
        Per-atom features, rows in any order.
    structure_index : array-like of int, shape (n_atoms,)
        Structure of each row; any integers, not necessarily contiguous.
    order : int
        Highest cumulant order :math:`K \ge 1`.
    return_structures : bool, default=False
        Also return the sorted unique structure indices, one per output row.

    Returns
    -------
    descriptor : numpy.ndarray of shape (n_structures, n_features * order), float64
        Column block :math:`k-1` (columns ``(k-1)*n_features`` to
        ``k*n_features``) holds :math:`\phi_k(\kappa_k)`; see :func:`cumulant_block`.
    structures : numpy.ndarray of shape (n_structures,)
        Only if ``return_structures``: the structure index of each row.

    References
    ----------
    Chorna et al., arXiv:2512.05717 [Chorna2025]_.
    """
    order = _check_positive_int("order", order)
    features = _as_features(features)
    structures, inverse, counts = _structure_groups(structure_index, len(features))
    kappa = cumulants_from_central_moments(_central_moments(features, inverse, counts, order))
    descriptor = np.concatenate([signed_root(kappa[k - 1], k) for k in range(1, order + 1)], 1)
    return (descriptor, structures) if return_structures else descriptor


def _central_moments(features, inverse, counts, order):
    r"""Per-structure mean and central moments :math:`\mu_2, \dots, \mu_K`.

    .. math::
        m_{1,A} = \frac{1}{n_A}\sum_{i \in A} x_i, \qquad
        \mu_{k,A} = \frac{1}{n_A}\sum_{i \in A} (x_i - m_{1,A})^k

    computed in two passes (mean first, then powers of the centred values), with
    segment sums over rows sorted by structure and columns in blocks.

    Parameters
    ----------
    features : numpy.ndarray of shape (n_atoms, n_features), float64
        Per-atom features.
    inverse : numpy.ndarray of int, shape (n_atoms,)
        Structure row (0 to ``n_structures - 1``) of each atom.
    counts : numpy.ndarray of int, shape (n_structures,)
        Number of atoms of each structure (all > 0).
    order : int
        Highest order :math:`K`.

    Returns
    -------
    numpy.ndarray of shape (order, n_structures, n_features)
        Slot 0 holds the mean :math:`m_1`; slot :math:`k-1` holds :math:`\mu_k`.
    """
    rows = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    n_features = features.shape[1]
    moments = np.empty((order, len(counts), n_features))
    step = max(1, _BLOCK_ELEMENTS // max(1, len(features)))
    for start in range(0, n_features, step):
        block = features[rows, start : start + step]
        mean = np.add.reduceat(block, starts, axis=0) / counts[:, None]
        moments[0, :, start : start + step] = mean
        centred = block - np.repeat(mean, counts, axis=0)
        power = centred.copy()
        for k in range(2, order + 1):
            power *= centred  # (x - m_1)^k
            moments[k - 1, :, start : start + step] = (
                np.add.reduceat(power, starts, axis=0) / counts[:, None]
            )
    return moments


def cumulants_from_central_moments(moments):
    r"""Cumulants from the mean and central moments, for any order.

    .. math::
        \kappa_1 = m_1, \qquad
        \kappa_n = \mu_n - \sum_{j=2}^{n-2} \binom{n-1}{j-1}\, \kappa_j\, \mu_{n-j}
        \quad (n \ge 2)

    the moment-cumulant recursion
    :math:`\kappa_n = m_n - \sum_{j=1}^{n-1}\binom{n-1}{j-1}\kappa_j m_{n-j}`
    [Smith1995]_ applied to the centred variable, whose first moment and first
    cumulant vanish (cumulants of order :math:`\ge 2` do not depend on the shift).
    It gives :math:`\kappa_4 = \mu_4 - 3\mu_2^2`, :math:`\kappa_5 = \mu_5 -
    10\mu_2\mu_3` and :math:`\kappa_6 = \mu_6 - 15\mu_4\mu_2 - 10\mu_3^2 + 30\mu_2^3`.
    Orders 7 and 8 match the series of :math:`\log M(t)` (tested); the reference
    script of [Chorna2025]_ swaps the coefficients 420 and 560 in :math:`\kappa_8`, so
    its order-8 descriptors differ from these.

    Parameters
    ----------
    moments : array-like of shape (order, ...)
        Slot 0: the mean :math:`m_1`; slot :math:`k-1`: the central moment
        :math:`\mu_k` (as returned by ``_central_moments``).

    Returns
    -------
    numpy.ndarray of shape (order, ...)
        Slot :math:`k-1` holds :math:`\kappa_k`.

    References
    ----------
    Smith, Am. Stat. 49, 217 (1995) [Smith1995]_.
    """
    mu = np.asarray(moments, dtype=np.float64)
    kappa = np.empty_like(mu)
    for n in range(1, len(mu) + 1):
        kappa[n - 1] = mu[n - 1]
        for j in range(2, n - 1):
            kappa[n - 1] -= comb(n - 1, j - 1) * kappa[j - 1] * mu[n - j - 1]
    return kappa


def signed_root(kappa, order):
    r"""Map a cumulant to the units of the features.

    .. math::
        \phi_k(\kappa) = \operatorname{sign}(\kappa)\,\lvert\kappa\rvert^{1/k}
        \quad (k \ge 2), \qquad \phi_1(\kappa) = \kappa

    Parameters
    ----------
    kappa : array-like
        Cumulants of order ``order``.
    order : int
        The order :math:`k`.

    Returns
    -------
    numpy.ndarray, same shape as ``kappa``
    """
    kappa = np.asarray(kappa, dtype=np.float64)
    if order == 1:
        return kappa
    return np.sign(kappa) * np.abs(kappa) ** (1.0 / order)


def cumulant_block(descriptor, n_features, order):
    r"""The columns of one cumulant order in a :func:`structure_cumulants` descriptor.

    .. math::
        \phi_k(\boldsymbol{\kappa}_k) = \mathbf{D}[:,\ (k-1)d : kd]

    Parameters
    ----------
    descriptor : array-like of shape (n_structures, n_features * K)
        Descriptor of order :math:`K \ge` ``order``.
    n_features : int
        Number :math:`d` of per-atom features.
    order : int
        The order :math:`k`, between 1 and :math:`K`.

    Returns
    -------
    numpy.ndarray of shape (n_structures, n_features)
    """
    descriptor = np.asarray(descriptor)
    max_order = _descriptor_order(descriptor, n_features)
    if not 1 <= order <= max_order:
        raise ValueError(
            f"order must lie between 1 and {max_order} (the descriptor has "
            f"{descriptor.shape[1]} columns = {max_order} x {n_features}), got {order!r}"
        )
    return descriptor[:, (order - 1) * n_features : order * n_features]


def cumulant_blocks(descriptor, n_features):
    """Split a descriptor of order :math:`K` into its :math:`K` column blocks.

    Parameters
    ----------
    descriptor : array-like of shape (n_structures, n_features * K)
        Output of :func:`structure_cumulants`.
    n_features : int
        Number of per-atom features.

    Returns
    -------
    list of numpy.ndarray of shape (n_structures, n_features)
        Block ``k - 1`` holds order :math:`k`.
    """
    descriptor = np.asarray(descriptor)
    return np.split(descriptor, _descriptor_order(descriptor, n_features), axis=1)


# ---------------------------------------------------------------------------------
# input checks and grouping
# ---------------------------------------------------------------------------------


def _structure_groups(structure_index, n_rows):
    """Sorted unique structures, each row's structure row, and the atom counts."""
    if isinstance(structure_index, torch.Tensor):
        structure_index = structure_index.detach().cpu().numpy()
    structure_index = np.asarray(structure_index)
    if structure_index.shape != (n_rows,):
        raise ValueError(
            f"structure_index must have shape ({n_rows},), one entry per row of the "
            f"per-atom array, got shape {structure_index.shape}"
        )
    if n_rows == 0:
        raise ValueError("no atoms: the per-atom array has 0 rows")
    if not np.issubdtype(structure_index.dtype, np.integer):
        raise ValueError(
            f"structure_index must hold integers, got dtype {structure_index.dtype}"
        )
    return np.unique(structure_index, return_inverse=True, return_counts=True)


def _as_features(features):
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(
            "features must be 2-D with shape (n_atoms, n_features), "
            f"got shape {features.shape}"
        )
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _descriptor_order(descriptor, n_features):
    if descriptor.ndim != 2:
        raise ValueError(
            f"descriptor must be 2-D (n_structures, n_features * order), got shape "
            f"{descriptor.shape}"
        )
    n_features = _check_positive_int("n_features", n_features)
    if descriptor.shape[1] == 0 or descriptor.shape[1] % n_features:
        raise ValueError(
            f"descriptor has {descriptor.shape[1]} columns, not a positive multiple of "
            f"n_features={n_features}"
        )
    return descriptor.shape[1] // n_features
