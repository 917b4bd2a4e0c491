"""Common latent space: DIRECT anchors, projection, alignment measures, OT, atypicality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from sklearn.metrics.pairwise import cosine_similarity
from sklearn.neighbors import NearestNeighbors

from mlipprobe.analysis import (
    alignment_matrices,
    anchor_project,
    atypicality,
    direct_anchors,
    element_centroids,
    environment_difference,
    knn,
    linear_cka,
    mutual_knn,
    nearest_atoms,
    ot_cost,
    procrustes_error,
    structure_atypicality,
)

ROOT = Path(__file__).resolve().parents[1]


def blobs(sizes, dim=12, spread=0.3, seed=0):
    """Gaussian blobs far apart: (X, label of each row)."""
    rng = np.random.default_rng(seed)
    centres = 10 * rng.normal(size=(len(sizes), dim))
    X = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])
    return X, np.repeat(np.arange(len(sizes)), sizes)


def latent_features(n=400, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    return np.tanh(rng.normal(size=(n, 6)) @ rng.normal(size=(6, dim)) / 2) + 0.05 * rng.normal(size=(n, dim))


def rotation(dim, seed=1):
    return scipy.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))[0]


@pytest.fixture(scope="module")
def demo_embeddings():
    """The demo MACE's backbone features: 120 reference molecules (no fluorine), 40 held-out
    typical ones, the same 40 strongly rattled, and every molecule with fluorine."""
    import mlipprobe
    from mlipprobe.data import KeyMap, read_structures

    molecules = read_structures(ROOT / "data" / "qm9_demo.extxyz", KeyMap(energy=None))
    without_fluorine = [m for m in molecules[:200] if 9 not in m.numbers]
    reference, typical = without_fluorine[:120], without_fluorine[120:160]
    rng = np.random.default_rng(0)
    rattled = [m.copy() for m in typical]
    for atoms in rattled:
        atoms.positions += rng.normal(scale=0.3, size=atoms.positions.shape)
    groups = {"reference": reference, "typical": typical, "rattled": rattled,
              "fluorine": [m for m in molecules if 9 in m.numbers]}
    backbone = mlipprobe.load_backbone(ROOT / "checkpoints" / "demo_mace_parent.pt")
    return {name: (backbone.embed(structures, batch_size=64, features=["backbone"])["backbone"],
                   np.concatenate([np.full(len(m), i) for i, m in enumerate(structures)]),
                   np.concatenate([m.numbers for m in structures]))
            for name, structures in groups.items()}


# --- DIRECT anchors ----------------------------------------------------------------------


def test_direct_picks_k_distinct_atoms_one_per_separated_cluster():
    X, label = blobs([200, 80, 40, 20, 10])
    anchors = direct_anchors(X, 5)
    assert sorted(label[anchors]) == [0, 1, 2, 3, 4]  # the small blobs are not outvoted by density
    anchors = direct_anchors(X, 30)
    assert len(anchors) == len(set(anchors.tolist())) == 30
    assert set(label[anchors]) == {0, 1, 2, 3, 4}


def test_direct_anchor_is_the_atom_nearest_its_cluster_centre_in_weighted_pc_space():
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    X, label = blobs([50, 50, 50], spread=0.5)
    standardised = StandardScaler().fit_transform(X)
    pca = PCA().fit(standardised)
    keep = pca.explained_variance_ > 1
    weighted = pca.transform(standardised)[:, keep] * pca.explained_variance_ratio_[keep]
    for anchor in direct_anchors(X, 3):
        members = np.flatnonzero(label == label[anchor])
        centre = weighted[members].mean(0)
        assert anchor == members[np.argmin(np.linalg.norm(weighted[members] - centre, axis=1))]


def test_direct_anchors_cover_the_elements_of_real_embeddings(demo_embeddings):
    X, _, numbers = demo_embeddings["reference"]
    anchors = direct_anchors(X, 40)
    assert len(set(anchors.tolist())) == 40
    assert set(numbers[anchors]) == {1, 6, 7, 8}


def test_direct_refuses_more_anchors_than_distinct_rows():
    X = np.repeat(np.eye(3), 5, axis=0)
    with pytest.raises(ValueError, match="Cannot choose 4 anchors from 15 atoms with 3 distinct feature rows"):
        direct_anchors(X, 4)


# --- projection ----------------------------------------------------------------------------


def test_projection_is_cosine_similarity_to_the_anchor_rows():
    X = latent_features()
    anchors = np.array([3, 50, 7, 199])
    Z = anchor_project(X, anchors, batch_size=64)
    np.testing.assert_allclose(Z, cosine_similarity(X, X[anchors]), atol=1e-12)
    np.testing.assert_allclose(anchor_project(X, X[anchors]), Z, atol=1e-12)
    np.testing.assert_allclose(Z[anchors, range(4)], 1.0)


def test_projection_puts_rotated_and_wider_copies_of_a_model_in_the_same_place():
    X = latent_features(dim=24)
    widen = scipy.linalg.qr(np.random.default_rng(2).normal(size=(40, 40)))[0][:24]  # 24 -> 40, orthonormal rows
    anchors = direct_anchors(X, 20)
    Z = anchor_project(X, anchors)
    np.testing.assert_allclose(anchor_project(3.0 * X @ rotation(24), anchors), Z, atol=1e-12)
    np.testing.assert_allclose(anchor_project(X @ widen, anchors), Z, atol=1e-12)


def test_projection_keeps_tensors_on_their_device_and_checks_rows():
    X = torch.as_tensor(latent_features(50))
    Z = anchor_project(X, torch.tensor([0, 1, 2]))
    assert isinstance(Z, torch.Tensor) and Z.shape == (50, 3) and Z.device == X.device
    with pytest.raises(ValueError, match=r"Anchor rows must lie in \[0, 50\)"):
        anchor_project(X, [0, 50])


# --- neighbours and alignment ------------------------------------------------------------------


def test_knn_matches_scikit_learn():
    X = latent_features(300)
    distances, indices = knn(X, None, 5, dtype=torch.float64)
    reference_distances, reference_indices = NearestNeighbors(n_neighbors=6).fit(X).kneighbors(X)
    np.testing.assert_array_equal(indices.numpy(), reference_indices[:, 1:])
    np.testing.assert_allclose(distances.numpy(), reference_distances[:, 1:], atol=1e-10)
    queries = X[:40] + 0.01
    _, indices = knn(queries, X, 3, dtype=torch.float64)
    np.testing.assert_array_equal(indices.numpy(), NearestNeighbors(n_neighbors=3).fit(X).kneighbors(queries)[1])


def test_mutual_knn_counts_shared_neighbours_as_a_set_intersection():
    A, B = latent_features(300, seed=0), latent_features(300, dim=40, seed=5)
    near_a = NearestNeighbors(n_neighbors=8).fit(A).kneighbors(A)[1][:, 1:]
    near_b = NearestNeighbors(n_neighbors=8).fit(B).kneighbors(B)[1][:, 1:]
    expected = np.mean([len(set(a) & set(b)) / 7 for a, b in zip(near_a, near_b)])
    assert mutual_knn(A, B, 7, dtype=torch.float64) == pytest.approx(expected)


def test_a_model_aligned_with_itself_scores_perfect_in_every_measure():
    X = latent_features()
    transformed = 2.5 * X @ rotation(24)
    assert mutual_knn(X, X, 10) == 1.0
    assert mutual_knn(X, transformed, 10, dtype=torch.float64) == 1.0
    assert linear_cka(X, transformed) == pytest.approx(1.0, abs=1e-12)
    assert procrustes_error(X, transformed) < 1e-12
    assert ot_cost(X, X) == pytest.approx(0.0, abs=1e-12)
    assert ot_cost(X, X, method="sinkhorn") == pytest.approx(0.0, abs=1e-12)


def test_unrelated_representations_score_near_chance():
    X = latent_features(500)
    shuffled = X[np.random.default_rng(0).permutation(len(X))]
    assert mutual_knn(X, shuffled, 10) < 0.05  # chance: k / n = 0.02
    assert linear_cka(X, shuffled) < 0.1
    assert procrustes_error(X, shuffled) > 1.0


def test_linear_cka_equals_the_centred_gram_matrix_form():
    A, B = latent_features(200, seed=1), latent_features(200, dim=16, seed=2)
    H = np.eye(200) - 1.0 / 200
    K, L = H @ A @ A.T @ H, H @ B @ B.T @ H
    assert linear_cka(A, B) == pytest.approx(np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L)), rel=1e-10)


def test_procrustes_error_matches_scipy_and_zero_padding():
    A, B = latent_features(200, seed=1), latent_features(200, seed=2)
    normalise = lambda M: (M - M.mean(0)) / np.linalg.norm(M - M.mean(0))  # noqa: E731
    R, _ = scipy.linalg.orthogonal_procrustes(normalise(A), normalise(B))
    assert procrustes_error(A, B) == pytest.approx(np.linalg.norm(normalise(A) @ R - normalise(B)), rel=1e-10)
    narrow = A[:, :10]
    padded = np.hstack([narrow, np.zeros((200, 14))])
    assert procrustes_error(narrow, B) == pytest.approx(procrustes_error(padded, B), rel=1e-10)
    assert procrustes_error(narrow, B) == pytest.approx(procrustes_error(B, narrow), rel=1e-10)
    nuclear = np.linalg.svd(normalise(narrow).T @ normalise(B), compute_uv=False).sum()
    assert procrustes_error(narrow, B) == pytest.approx(np.sqrt(2 - 2 * nuclear), rel=1e-8)


def test_alignment_matrices_equal_the_pairwise_measures():
    models = [latent_features(300, dim=24, seed=0), latent_features(300, dim=40, seed=5), latent_features(300, dim=8, seed=7)]
    models.append(2.0 * models[0] @ rotation(24))
    matrices = alignment_matrices(models, 7)
    for i, A in enumerate(models):
        for j, B in enumerate(models):
            assert matrices["mutual_knn"][i, j] == pytest.approx(mutual_knn(A, B, 7))
            assert matrices["cka"][i, j] == pytest.approx(linear_cka(A, B), rel=1e-10)
            assert matrices["procrustes"][i, j] == pytest.approx(procrustes_error(A, B), abs=1e-7)
    assert np.all(np.diag(matrices["procrustes"]) == 0) and matrices["procrustes"][0, 3] < 1e-7


def test_ot_cost_is_the_optimal_assignment_and_sees_a_translation():
    A, B = latent_features(60, seed=1), latent_features(60, seed=2)
    cost = ((A[:, None] - B[None]) ** 2).sum(-1)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    assert ot_cost(A, B, method="emd") == pytest.approx(cost[rows, cols].mean(), rel=1e-9)
    shift = np.full(A.shape[1], 0.2)
    assert ot_cost(A, A + shift) == pytest.approx(np.sum(shift**2), rel=1e-9)
    assert ot_cost(A, A + shift, method="sinkhorn") == pytest.approx(np.sum(shift**2), rel=0.05)
    assert ot_cost(A, A + shift, exact_max=10) == ot_cost(A, A + shift, method="sinkhorn")
    with pytest.raises(ValueError, match="OT needs point clouds in one space"):
        ot_cost(A, A[:, :5])


# --- atypicality -----------------------------------------------------------------------------


def test_atypicality_is_z_scored_by_the_reference_itself():
    rng = np.random.default_rng(0)
    reference, typical = rng.normal(size=(1000, 8)), rng.normal(size=(300, 8))
    outliers = rng.normal(size=(50, 8)) + 4.0
    assert abs(np.mean(atypicality(reference, typical, 10))) < 0.3
    assert np.min(atypicality(reference, outliers, 10)) > 3
    structures, mean = structure_atypicality([1.0, 3.0, 2.0, 0.0], [7, 7, 2, 7])
    np.testing.assert_array_equal(structures, [2, 7])
    np.testing.assert_allclose(mean, [2.0, 4.0 / 3])
    np.testing.assert_allclose(structure_atypicality([1.0, 3.0, 2.0, 0.0], [7, 7, 2, 7], "max")[1], [2.0, 3.0])


def test_rattled_molecules_and_a_new_element_are_atypical(demo_embeddings):
    reference, _, _ = demo_embeddings["reference"]
    anchors = reference[direct_anchors(reference, 100)]
    common = anchor_project(reference, anchors)
    per_structure, per_atom = {}, {}
    for name in ("typical", "rattled", "fluorine"):
        X, structure_index, numbers = demo_embeddings[name]
        per_atom[name] = atypicality(common, anchor_project(X, anchors), 10)
        per_structure[name] = structure_atypicality(per_atom[name], structure_index)[1]
    # every strongly rattled molecule is more atypical than every held-out typical one
    assert per_structure["rattled"].min() > per_structure["typical"].max()
    assert abs(np.median(per_structure["typical"])) < 1.0
    # fluorine, absent from the reference: its atoms stand out from typical atoms
    fluorine = per_atom["fluorine"][demo_embeddings["fluorine"][2] == 9]
    assert np.median(fluorine) > np.percentile(per_atom["typical"], 99)
    assert fluorine.min() > np.percentile(per_atom["typical"], 90)


# --- embedding arithmetic ------------------------------------------------------------------------


def test_adding_the_carbon_to_nitrogen_difference_moves_carbons_next_to_nitrogens(demo_embeddings):
    X, _, numbers = demo_embeddings["reference"]
    centroids = element_centroids(X, numbers)
    np.testing.assert_allclose(centroids[7], X[numbers == 7].astype(np.float64).mean(0))
    carbons = np.flatnonzero(numbers == 6)
    shift = environment_difference(X, numbers, 6, 7)
    np.testing.assert_allclose(shift, centroids[7] - centroids[6])
    nearest_before = [nearest_atoms(X, X[i], 1, exclude=[i])[0][0, 0] for i in carbons]
    nearest_after = [nearest_atoms(X, X[i] + shift, 1, exclude=[i])[0][0, 0] for i in carbons]
    assert np.mean(numbers[nearest_before] == 7) < 0.1
    assert np.mean(numbers[nearest_after] == 7) > 0.6
    with pytest.raises(ValueError, match=r"Element Z=9 has no atoms here; present: \[1, 6, 7, 8\]"):
        environment_difference(X, numbers, 6, 9)
