"""Statistics of a training set that a model built from scratch needs."""

from __future__ import annotations

import numpy as np
from ase.neighborlist import neighbor_list


def composition_matrix(structures, atomic_numbers) -> np.ndarray:
    """Counts of each element per structure, shape (n_structures, n_elements)."""
    column = {z: i for i, z in enumerate(atomic_numbers)}
    counts = np.zeros((len(structures), len(atomic_numbers)))
    for row, atoms in enumerate(structures):
        for z in atoms.numbers:
            counts[row, column[int(z)]] += 1
    return counts


def energy_statistics(structures, r_max: float, atomic_numbers=None) -> dict:
    """Element list, least-squares atomic energies and neighbour/energy scales.

    .. math::  E_s \\approx \\sum_Z n_{sZ} E^0_Z, \\quad
               \\epsilon_s = (E_s - \\sum_Z n_{sZ} E^0_Z) / N_s

    ``interaction_shift``/``interaction_scale`` are the mean and standard deviation of the
    per-atom residual energies :math:`\\epsilon_s` (0 and 1 without energy labels).
    """
    if atomic_numbers is None:
        atomic_numbers = sorted({int(z) for atoms in structures for z in atoms.numbers})
    counts = composition_matrix(structures, atomic_numbers)
    neighbours = [len(neighbor_list("i", atoms, r_max)) / len(atoms) for atoms in structures]
    stats = {
        "atomic_numbers": [int(z) for z in atomic_numbers],
        "avg_num_neighbors": float(np.mean(neighbours)),
        "atomic_energies": [0.0] * len(atomic_numbers),
        "interaction_shift": 0.0,
        "interaction_scale": 1.0,
    }
    if all("energy" in atoms.info for atoms in structures):
        energies = np.array([atoms.info["energy"] for atoms in structures])
        e0, *_ = np.linalg.lstsq(counts, energies, rcond=None)
        residual = (energies - counts @ e0) / counts.sum(axis=1)
        stats["atomic_energies"] = e0.tolist()
        stats["interaction_shift"] = float(residual.mean())
        stats["interaction_scale"] = float(residual.std()) or 1.0
    return stats
