r"""A common latent space for models of any width: anchors, alignment, atypicality.

Every model's atomic embeddings :math:`\mathbf{e}_i` are replaced by their cosine
similarities to the embeddings of the same :math:`K` anchor atoms [LiWalsh2026]_,

.. math::
    \mathbf{z}_i = \bigl[\cos(\mathbf{e}_i, \mathbf{a}_1), \dots,
    \cos(\mathbf{e}_i, \mathbf{a}_K)\bigr],

so that models of different widths live in one :math:`K`-dimensional space. The anchors
are atoms, chosen once by DIRECT sampling [Qi2024]_ on a reference model and reused, by
row, for every model. In that space (and in the raw spaces where a measure allows
different widths) models are compared by mutual k-nearest-neighbour overlap [Huh2024]_,
linear CKA [Kornblith2019]_, the orthogonal Procrustes residual and optimal transport
(POT, [Flamary2021]_); atoms far from a reference manifold are flagged by a kNN-distance
score.

Rows of ``A`` and ``B`` in the pairwise measures are the same atoms in the same order.
Nearest neighbours come from blocked squared distances with ``torch.topk``, on CPU or
GPU (``device=``); ties between equal distances are broken the same way for both models.

References
----------
.. [LiWalsh2026] Z. Li, A. Walsh, Nat. Mach. Intell. (2026): platonic representations
   of interatomic potentials; code: github.com/lizhenzhupearl/ManiFish.
.. [Qi2024] J. Qi, T. W. Ko, B. C. Wood, T. A. Pham, S. P. Ong, "Robust training of
   machine learning interatomic potentials with dimensionality reduction and stratified
   sampling", npj Comput. Mater. 10, 43 (2024) (DIRECT sampling).
.. [Huh2024] M. Huh, B. Cheung, T. Wang, P. Isola, "The Platonic Representation
   Hypothesis", ICML (2024) (mutual nearest neighbours).
.. [Kornblith2019] S. Kornblith, M. Norouzi, H. Lee, G. Hinton, "Similarity of Neural
   Network Representations Revisited", ICML (2019).
.. [Flamary2021] R. Flamary et al., "POT: Python Optimal Transport", JMLR 22, 1 (2021);
   Sinkhorn divergence: A. Genevay, G. Peyré, M. Cuturi, AISTATS (2018).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = [
    "alignment_matrices",
    "anchor_project",
    "atypicality",
    "direct_anchors",
    "element_centroids",
    "environment_difference",
    "knn",
    "knn_overlap",
    "linear_cka",
    "mutual_knn",
    "nearest_atoms",
    "ot_cost",
    "procrustes_error",
    "structure_atypicality",
]

#: Elements of one distance block (rows x reference rows): 2**26 float32 = 256 MiB.
_BLOCK_ELEMENTS = 1 << 26


def _tensor(X, device=None, dtype=torch.float64, name: str = "X") -> torch.Tensor:
    """A 2-D tensor on ``device`` (default: X's own device if a tensor, else CPU)."""
    if isinstance(X, torch.Tensor):
        X = X.to(device=device or X.device, dtype=dtype)
    else:
        X = torch.as_tensor(np.asarray(X), dtype=dtype, device=device or "cpu")
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_atoms, n_features), got shape {tuple(X.shape)}")
    return X


def _same_rows(A: torch.Tensor, B: torch.Tensor) -> None:
    if len(A) != len(B):
        raise ValueError(f"A has {len(A)} rows and B has {len(B)}: rows must be the same atoms in both")


# ---------------------------------------------------------------------------------
# anchors and projection
# ---------------------------------------------------------------------------------


def direct_anchors(X, k: int = 100, *, threshold_init: float = 0.5, max_rounds: int = 60) -> np.ndarray:
    r"""Rows of ``k`` anchor atoms chosen by DIRECT sampling [Qi2024]_.

    .. math::
        \mathbf{P} = \bigl[\mathrm{PCA}(\mathrm{std}(\mathbf{X}))\bigr]_{:, \lambda_j > 1}
        \operatorname{diag}(r_j), \qquad
        \text{anchor}_c = \operatorname*{argmin}_{i \in c}
        \lVert \mathbf{p}_i - \bar{\mathbf{p}}_c \rVert

    Columns are standardised; principal components with eigenvalue
    :math:`\lambda_j > 1` (Kaiser's rule, at least one) are kept and weighted by their
    explained-variance ratio :math:`r_j`; Birch clusters the weighted scores into ``k``
    clusters (its threshold is lowered, as in maml's DIRECT, while fewer come out); the
    atom nearest each cluster's centroid :math:`\bar{\mathbf{p}}_c` is its anchor.
    Deterministic: no random state.

    Parameters
    ----------
    X : array-like of shape (n_atoms, n_features)
        The reference model's atomic embeddings.
    k : int
        Number of anchors (the paper: 100).
    threshold_init : float
        Birch's first subcluster radius in the weighted PC space.
    max_rounds : int
        Threshold reductions tried before giving up.

    Returns
    -------
    numpy.ndarray of int, shape (k,)
        Distinct row indices of ``X``, one per cluster.
    """
    from sklearn.cluster import Birch
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (n_atoms, n_features), got shape {X.shape}")
    n_distinct = len(np.unique(X, axis=0))
    if not 1 <= k <= n_distinct:
        raise ValueError(f"Cannot choose {k} anchors from {len(X)} atoms with {n_distinct} distinct feature rows")
    pca = PCA(svd_solver="full").fit(standardised := StandardScaler().fit_transform(X))
    m = max(1, int(np.sum(pca.explained_variance_ > 1)))
    scores = pca.transform(standardised)[:, :m] * pca.explained_variance_ratio_[:m]
    threshold = threshold_init
    for _ in range(max_rounds):
        birch = Birch(n_clusters=None, threshold=threshold).fit(scores)
        n_subclusters = len(birch.subcluster_centers_)
        if n_subclusters >= k:
            labels = birch.set_params(n_clusters=k).partial_fit().predict(scores)  # global step only
            if len(np.unique(labels)) == k:
                break
        threshold *= 0.9 * min(n_subclusters, k - 1) / k  # maml's rule, a little faster
    else:
        raise ValueError(f"Birch found no {k} non-empty clusters after {max_rounds} threshold reductions")
    anchors = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        centroid = scores[members].mean(axis=0)
        anchors.append(members[np.argmin(np.linalg.norm(scores[members] - centroid, axis=1))])
    return np.asarray(anchors, dtype=np.int64)


def anchor_project(X, anchors, *, batch_size: int = 65536, device=None, dtype=torch.float64):
    r"""Cosine similarities of every row to the anchors: the common space [LiWalsh2026]_.

    .. math::
        z_{ik} = \frac{\mathbf{e}_i \cdot \mathbf{a}_k}
        {\lVert \mathbf{e}_i \rVert\, \lVert \mathbf{a}_k \rVert}

    A zero row has similarity 0 to every anchor.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_atoms, n_features)
        One model's atomic embeddings.
    anchors : array-like of int, shape (K,), or of float, shape (K, n_features)
        Anchor rows of ``X`` (the same atoms for every model), or anchor embeddings.
    batch_size : int
        Rows projected at a time.

    Returns
    -------
    numpy.ndarray or torch.Tensor of shape (n_atoms, K)
        A tensor (on ``X``'s device) if ``X`` is a tensor, else an array.
    """
    E = _tensor(X, device, dtype)
    anchors = anchors if isinstance(anchors, torch.Tensor) else torch.as_tensor(np.asarray(anchors))
    if anchors.ndim == 1:
        if anchors.dtype.is_floating_point:
            raise ValueError("anchors must be integer row indices (K,) or anchor embeddings (K, n_features)")
        rows = anchors.to(E.device, torch.long)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(E)):
            raise ValueError(f"Anchor rows must lie in [0, {len(E)}), got {rows.min().item()}..{rows.max().item()}")
        A = E[rows]
    else:
        A = _tensor(anchors, E.device, dtype, "anchors")
        if A.shape[1] != E.shape[1]:
            raise ValueError(f"Anchors have {A.shape[1]} features but X has {E.shape[1]}")
    A = torch.nn.functional.normalize(A, dim=1)
    Z = torch.cat([torch.nn.functional.normalize(E[s : s + batch_size], dim=1) @ A.T
                   for s in range(0, len(E), batch_size)]) if len(E) else E.new_zeros((0, len(A)))
    return Z if isinstance(X, torch.Tensor) else Z.cpu().numpy()


# ---------------------------------------------------------------------------------
# nearest neighbours
# ---------------------------------------------------------------------------------


def _smallest(chunks: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k smallest entries per row of (rows, n_chunks, chunk) and their column indices.

    Exact: an entry outside the k chunks with the smallest minima has at least k smaller
    or equal entries (one per such chunk), so only those k chunks are searched.
    """
    rows, n_chunks, chunk = chunks.shape
    best = torch.topk(chunks.amin(dim=2), min(k, n_chunks), dim=1, largest=False).indices
    candidates = torch.gather(chunks, 1, best[:, :, None].expand(-1, -1, chunk)).reshape(rows, -1)
    values, where = torch.topk(candidates, k, dim=1, largest=False)
    return values, best.gather(1, where // chunk) * chunk + where % chunk


def knn(query, reference=None, k: int = 10, *, device=None, dtype=torch.float32,
        chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Euclidean k nearest reference rows of every query row, blocked.

    .. math::  d_{ij}^2 - \lVert \mathbf{q}_i \rVert^2 = [\mathbf{q}_i, 1] \cdot
               [-2\mathbf{r}_j, \lVert \mathbf{r}_j \rVert^2]

    One matrix product per block of query rows gives each row's distances up to a
    constant; the k smallest are searched in the ``chunk``-column chunks with the
    smallest minima (exact). With ``reference=None`` the query is its own reference and
    each row's own entry is left out. Returns ``(distances, indices)``, both
    (n_query, k), nearest first.
    """
    Q = _tensor(query, device, dtype, "query")
    R = Q if reference is None else _tensor(reference, Q.device, dtype, "reference")
    if Q.shape[1] != R.shape[1]:
        raise ValueError(f"query has {Q.shape[1]} features but reference has {R.shape[1]}")
    available = len(R) - (reference is None)
    if not 1 <= k <= available:
        raise ValueError(f"k = {k} neighbours requested but the reference has {available} other rows")
    width = -(-len(R) // chunk) * chunk
    augmented = torch.cat([-2 * R, (R * R).sum(1, keepdim=True)], dim=1)
    augmented = torch.nn.functional.pad(augmented, (0, 0, 0, width - len(R)))
    augmented[len(R):, -1] = float("inf")  # padding columns are never chosen
    block = max(1, _BLOCK_ELEMENTS // width)
    distances, indices = [], []
    for start in range(0, len(Q), block):
        q = Q[start : start + block]
        partial = torch.cat([q, q.new_ones(len(q), 1)], dim=1) @ augmented.T
        if reference is None:
            rows = torch.arange(len(q), device=Q.device)
            partial[rows, rows + start] = float("inf")
        values, where = _smallest(partial.view(len(q), -1, chunk), k)
        distances.append(values.add_((q * q).sum(1, keepdim=True)).clamp_(min=0).sqrt_())
        indices.append(where)
    return torch.cat(distances), torch.cat(indices)


def knn_overlap(neighbours_a, neighbours_b) -> np.ndarray:
    r"""Pointwise overlap of two neighbour lists of the same atoms.

    .. math::  o_i = \frac{1}{k} \bigl| \mathcal{N}_k^{A}(i) \cap \mathcal{N}_k^{B}(i) \bigr|

    ``neighbours_a``, ``neighbours_b``: (n, k) row indices, e.g. from :func:`knn`.
    Returns an array of shape (n,) with values in [0, 1].
    """
    a, b = torch.as_tensor(neighbours_a), torch.as_tensor(neighbours_b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"Neighbour lists must have the same shape (n, k), got {tuple(a.shape)} and {tuple(b.shape)}")
    shared = (a[:, :, None] == b.to(a.device)[:, None, :]).any(dim=2).sum(dim=1)
    return (shared.double() / a.shape[1]).cpu().numpy()


def mutual_knn(A, B, k: int = 10, *, device=None, dtype=torch.float32) -> float:
    r"""Mutual k-nearest-neighbour overlap of two representations of the same atoms.

    .. math::
        m(\mathbf{A}, \mathbf{B}) = \frac{1}{nk} \sum_i
        \bigl| \mathcal{N}_k^{A}(i) \cap \mathcal{N}_k^{B}(i) \bigr|

    :math:`\mathcal{N}_k^{A}(i)`: the k nearest other atoms of atom i in A (Euclidean).
    1 when both spaces order every neighbourhood alike, about :math:`k/n` by chance;
    A and B may differ in width [Huh2024]_.
    """
    A, B = _tensor(A, device, dtype, "A"), _tensor(B, device, dtype, "B")
    _same_rows(A, B)
    return float(knn_overlap(knn(A, None, k)[1], knn(B.to(A.device), None, k)[1]).mean())


def linear_cka(A, B, *, device=None, dtype=torch.float64) -> float:
    r"""Linear centred kernel alignment [Kornblith2019]_ (feature-space form).

    .. math::
        \mathrm{CKA}(\mathbf{A}, \mathbf{B}) =
        \frac{\lVert \mathbf{B}_c^T \mathbf{A}_c \rVert_F^2}
        {\lVert \mathbf{A}_c^T \mathbf{A}_c \rVert_F\, \lVert \mathbf{B}_c^T \mathbf{B}_c \rVert_F}

    with column-centred :math:`\mathbf{A}_c, \mathbf{B}_c`. In [0, 1]; 1 for
    representations equal up to rotation and isotropic scaling.
    """
    A, B = _tensor(A, device, dtype, "A"), _tensor(B, device, dtype, "B")
    _same_rows(A, B)
    A, B = A - A.mean(0), B.to(A.device) - B.to(A.device).mean(0)
    cross = torch.linalg.matrix_norm(B.T @ A) ** 2
    return float(cross / (torch.linalg.matrix_norm(A.T @ A) * torch.linalg.matrix_norm(B.T @ B)))


def procrustes_error(A, B, *, device=None, dtype=torch.float64) -> float:
    r"""Residual of the best orthogonal alignment of A onto B, after normalisation.

    .. math::
        \min_{\mathbf{R}^T\mathbf{R} = \mathbf{I}} \lVert \hat{\mathbf{A}}\mathbf{R}
        - \hat{\mathbf{B}} \rVert_F, \qquad
        \hat{\mathbf{A}} = \mathbf{A}_c / \lVert \mathbf{A}_c \rVert_F, \quad
        \mathbf{R} = \mathbf{U}\mathbf{V}^T \text{ from }
        \hat{\mathbf{A}}^T\hat{\mathbf{B}} = \mathbf{U}\mathbf{S}\mathbf{V}^T

    Columns are centred and each matrix scaled to unit Frobenius norm; the narrower is
    padded with zero columns, so that :math:`\mathbf{R}` is square. In
    :math:`[0, \sqrt{2}]`, equal to :math:`\sqrt{2 - 2\lVert\hat{\mathbf{A}}^T
    \hat{\mathbf{B}}\rVert_*}`; 0 for representations equal up to rotation and scale;
    symmetric.
    """
    A, B = _tensor(A, device, dtype, "A"), _tensor(B, device, dtype, "B")
    _same_rows(A, B)
    width = max(A.shape[1], B.shape[1])
    A, B = (torch.nn.functional.pad(M, (0, width - M.shape[1])) for M in (A, B.to(A.device)))
    A, B = A - A.mean(0), B - B.mean(0)
    A, B = A / torch.linalg.matrix_norm(A), B / torch.linalg.matrix_norm(B)
    U, _, Vh = torch.linalg.svd(A.T @ B, full_matrices=False)
    return float(torch.linalg.matrix_norm(A @ (U @ Vh) - B))


def _centred_unit(X, device, dtype) -> torch.Tensor:
    X = _tensor(X, device, dtype)
    X = X - X.mean(0)
    return X / torch.linalg.matrix_norm(X)


def alignment_matrices(features: Sequence, k: int = 10, *, device=None) -> dict[str, np.ndarray]:
    r"""Mutual kNN, linear CKA and Procrustes residual between every pair of models.

    ``features``: one (n_atoms, d_m) array per model, the same atoms in every one (widths
    may differ). Each model's neighbour lists, centring and norms are computed once; the
    pair terms are then one product each:

    .. math::
        \mathrm{CKA}_{ij} = \frac{\lVert \mathbf{X}_j^T \mathbf{X}_i \rVert_F^2}
        {\lVert \mathbf{X}_i^T \mathbf{X}_i \rVert_F \lVert \mathbf{X}_j^T \mathbf{X}_j \rVert_F},
        \qquad
        P_{ij} = \sqrt{2 - 2 \lVert \hat{\mathbf{X}}_i^T \hat{\mathbf{X}}_j \rVert_*}

    (centred :math:`\mathbf{X}`; unit-norm :math:`\hat{\mathbf{X}}`), the same values
    as :func:`linear_cka` and :func:`procrustes_error` (the latter up to rounding of
    order :math:`10^{-8}` near 0; the diagonal is 0 by definition). Returns
    ``{"mutual_knn": M, "cka": M, "procrustes": M}``, each (n_models, n_models), symmetric.
    """
    unit = [_centred_unit(X, device, torch.float64) for X in features]
    for X in unit[1:]:
        _same_rows(unit[0], X)
    neighbours = [knn(X, None, k)[1] for X in unit]  # centring and scaling keep the neighbours
    gram = [torch.linalg.matrix_norm(X.T @ X) for X in unit]
    n = len(unit)
    out = {name: np.eye(n) if name != "procrustes" else np.zeros((n, n)) for name in ("mutual_knn", "cka", "procrustes")}
    for i in range(n):
        for j in range(i + 1, n):
            cross = unit[i].T @ unit[j].to(unit[i].device)
            values = {"mutual_knn": float(knn_overlap(neighbours[i], neighbours[j]).mean()),
                      "cka": float(torch.linalg.matrix_norm(cross) ** 2 / (gram[i] * gram[j])),
                      "procrustes": float(torch.sqrt(torch.clamp(2 - 2 * torch.linalg.svdvals(cross).sum(), min=0)))}
            for name, value in values.items():
                out[name][i, j] = out[name][j, i] = value
    return out


def ot_cost(A, B, *, method: str = "auto", reg: float = 0.1, exact_max: int = 3000) -> float:
    r"""Optimal-transport cost between two point clouds in one space (POT [Flamary2021]_).

    .. math::
        W(\mathbf{A}, \mathbf{B}) = \min_{\mathbf{P} \in U(a, b)} \sum_{ij} P_{ij}
        \lVert \mathbf{a}_i - \mathbf{b}_j \rVert^2

    with uniform weights: the mean squared displacement of the best matching (exact
    EMD, ``ot.emd2``). ``sinkhorn`` solves the entropic problem with
    :math:`\varepsilon = \texttt{reg} \cdot \mathrm{mean}(M_{AB})` and
    returns the Sinkhorn divergence
    :math:`W_\varepsilon(A,B) - \tfrac12 W_\varepsilon(A,A) - \tfrac12 W_\varepsilon(B,B)`
    of the transport costs, 0 for equal clouds. ``auto``: EMD up to ``exact_max`` rows
    on either side, Sinkhorn above. The rows need not correspond (the clouds may differ
    in size); the widths must agree (use the common space across models).
    """
    import ot

    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"OT needs point clouds in one space: got shapes {A.shape} and {B.shape} "
                         "(project both onto the same anchors first)")
    if method not in ("auto", "emd", "sinkhorn"):
        raise ValueError(f"OT method must be 'auto', 'emd' or 'sinkhorn', got '{method}'")
    if method == "auto":
        method = "emd" if max(len(A), len(B)) <= exact_max else "sinkhorn"
    weights = lambda X: np.full(len(X), 1.0 / len(X))  # noqa: E731
    M = ot.dist(A, B)
    if method == "emd":
        return float(ot.emd2(weights(A), weights(B), M, numItermax=10_000_000))
    epsilon = reg * float(M.mean()) or reg

    def transport(X, Y, cost):
        plan = ot.sinkhorn(weights(X), weights(Y), cost, epsilon, numItermax=10_000, stopThr=1e-7)
        return float(np.sum(plan * cost))

    return transport(A, B, M) - 0.5 * transport(A, A, ot.dist(A, A)) - 0.5 * transport(B, B, ot.dist(B, B))


# ---------------------------------------------------------------------------------
# atypicality
# ---------------------------------------------------------------------------------


def atypicality(X_ref, X_query, k: int = 10, *, device=None, dtype=torch.float32) -> np.ndarray:
    r"""kNN-distance atypicality of query rows against a reference manifold [LiWalsh2026]_.

    .. math::
        s(\mathbf{q}) = \frac{\bar d_k(\mathbf{q}) - \mu}{\sigma}, \qquad
        \bar d_k(\mathbf{q}) = \frac1k \sum_{j \in \mathcal{N}_k(\mathbf{q})}
        \lVert \mathbf{q} - \mathbf{x}_j \rVert

    :math:`\mathcal{N}_k` are the k nearest reference rows; :math:`\mu, \sigma` the mean
    and standard deviation of :math:`\bar d_k` over the reference rows themselves (each
    without itself). About 0 for typical rows, large for rows far from the reference.

    Returns
    -------
    numpy.ndarray of shape (n_query,)
    """
    R = _tensor(X_ref, device, dtype, "X_ref")
    Q = _tensor(X_query, R.device, dtype, "X_query")
    reference = knn(R, None, k)[0].mean(1)
    mu, sigma = reference.mean(), reference.std()
    scores = (knn(Q, R, k)[0].mean(1) - mu) / (sigma if sigma > 0 else 1.0)
    return scores.cpu().numpy().astype(np.float64)


def structure_atypicality(scores, structure_index, reduce: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    r"""Per-structure atypicality from per-atom scores: the mean (or max) over its atoms.

    Returns ``(structures (n_structures,), scores (n_structures,))``, structures sorted.
    """
    scores, structure_index = np.asarray(scores, dtype=np.float64), np.asarray(structure_index)
    if scores.shape != structure_index.shape:
        raise ValueError(f"scores {scores.shape} and structure_index {structure_index.shape} differ")
    structures, inverse = np.unique(structure_index, return_inverse=True)
    if reduce == "mean":
        return structures, np.bincount(inverse, scores) / np.bincount(inverse)
    if reduce == "max":
        out = np.full(len(structures), -np.inf)
        np.maximum.at(out, inverse, scores)
        return structures, out
    raise ValueError(f"reduce must be 'mean' or 'max', got '{reduce}'")


# ---------------------------------------------------------------------------------
# embedding arithmetic
# ---------------------------------------------------------------------------------


def element_centroids(X, atomic_numbers) -> dict[int, np.ndarray]:
    r"""Mean embedding of each element's atoms: :math:`\bar{\mathbf{e}}_Z`."""
    X, numbers = np.asarray(X, dtype=np.float64), np.asarray(atomic_numbers)
    if len(X) != len(numbers):
        raise ValueError(f"X has {len(X)} rows but atomic_numbers has {len(numbers)}")
    return {int(z): X[numbers == z].mean(axis=0) for z in np.unique(numbers)}


def environment_difference(X, atomic_numbers, source: int, target: int) -> np.ndarray:
    r"""Difference vector between two elements' environments,
    :math:`\bar{\mathbf{e}}_{Z_\mathrm{target}} - \bar{\mathbf{e}}_{Z_\mathrm{source}}`.

    Added to a ``source`` atom's embedding, it moves the atom towards ``target``
    environments; :func:`nearest_atoms` says which atoms the result resembles.
    """
    centroids = element_centroids(X, atomic_numbers)
    for z in (source, target):
        if z not in centroids:
            raise ValueError(f"Element Z={z} has no atoms here; present: {sorted(centroids)}")
    return centroids[target] - centroids[source]


def nearest_atoms(X, queries, k: int = 5, *, exclude: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    r"""The ``k`` rows of X most similar (cosine) to each query vector.

    .. math::  \operatorname*{top\text{-}k}_j \cos(\mathbf{q}, \mathbf{x}_j)

    ``exclude``: rows never returned (e.g. the atom a query was built from). Returns
    ``(indices, similarities)``, each (n_queries, k), most similar first.
    """
    X = _tensor(X)
    queries = _tensor(np.atleast_2d(np.asarray(queries, dtype=np.float64)), name="queries")
    if queries.shape[1] != X.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} features but X has {X.shape[1]}")
    similarity = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(X, dim=1).T
    similarity[:, list(exclude)] = -float("inf")
    values, indices = torch.topk(similarity, k, dim=1)
    return indices.numpy(), values.numpy()
