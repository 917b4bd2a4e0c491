"""Side-by-side timing of the common-space projection and mutual kNN: ours vs NumPy/scikit-learn.

Two synthetic "models" (widths 128 and 256 by default) embed the same atoms: smooth
functions of one shared 16-d latent plus noise, as atomic features of two potentials
would be. Both are projected onto cosine similarities to the same K anchor rows and
compared by mutual k-nearest-neighbour overlap in that common space.

- ours: :func:`mlipprobe.analysis.anchor_project` and :func:`mlipprobe.analysis.mutual_knn`
  (batched torch: one matmul per block, blocked squared distances and ``torch.topk``);
- reference: the straightforward route, NumPy cosine similarities and
  ``sklearn.neighbors.NearestNeighbors`` (default algorithm) per model, neighbour lists
  intersected as Python sets.

Times are process CPU times (all threads; robust on a shared machine) with wall times
beside them; ``--threads`` sets the threads of torch, BLAS and OpenMP (scikit-learn) alike.
The last line printed is ``ratio: <reference CPU time / our CPU time>`` (projection +
mutual kNN of both models).

Example::

    python benchmarks/bench_common_space.py                    # 100,000 atoms per model
    python benchmarks/bench_common_space.py --threads 1
    python benchmarks/bench_common_space.py --n-atoms 20000 --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from mlipprobe.analysis import anchor_project, mutual_knn


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-atoms", type=int, default=100_000)
    parser.add_argument("--dim-a", type=int, default=128)
    parser.add_argument("--dim-b", type=int, default=256)
    parser.add_argument("--anchors", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's default")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def synthetic_models(n_atoms, dim_a, dim_b, seed):
    """Two feature matrices of the same atoms, both smooth functions of one latent."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_atoms, 16))
    models = []
    for dim in (dim_a, dim_b):
        X = np.tanh(latent @ rng.normal(size=(16, dim)) / 4) + 0.05 * rng.normal(size=(n_atoms, dim))
        models.append(X.astype(np.float32))
    return models


def timed(function, *args, **kwargs):
    """``(result, (cpu seconds, wall seconds))``; on a GPU only the wall time means anything."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, (time.process_time() - cpu, time.perf_counter() - wall)


def reference_projection(X, anchors):
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    return unit @ unit[anchors].T


def reference_mutual_knn(A, B, k):
    neighbours = [NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z, return_distance=False)[:, 1:]
                  for Z in (A, B)]
    shared = sum(len(set(a) & set(b)) for a, b in zip(*neighbours))
    return shared / (len(A) * k)


def ours(models, anchors, k, device):
    tensors = [torch.as_tensor(X, device=device) for X in models]
    projected, t_project = timed(lambda: [anchor_project(X, anchors, dtype=torch.float32) for X in tensors])
    score, t_knn = timed(mutual_knn, *projected, k)
    return [Z.cpu().numpy() for Z in projected], score, t_project, t_knn


def reference(models, anchors, k):
    projected, t_project = timed(lambda: [reference_projection(X, anchors) for X in models])
    score, t_knn = timed(reference_mutual_knn, *projected, k)
    return projected, score, t_project, t_knn


def report(name, t_project, t_knn, score):
    print(f"{name:10s} projection {t_project[0]:8.3f} s cpu ({t_project[1]:7.3f} s wall)   "
          f"mutual kNN {t_knn[0]:8.3f} s cpu ({t_knn[1]:7.3f} s wall)   score {score:.6f}")


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    models = synthetic_models(args.n_atoms, args.dim_a, args.dim_b, args.seed)
    anchors = np.sort(np.random.default_rng(args.seed).choice(args.n_atoms, args.anchors, replace=False))
    print(f"n_atoms={args.n_atoms} widths={args.dim_a},{args.dim_b} anchors={args.anchors} k={args.k} "
          f"device={args.device} threads={threads} float32")
    with threadpool_limits(threads):
        our_z, our_score, our_project, our_knn = ours(models, anchors, args.k, args.device)
        report("ours", our_project, our_knn, our_score)
        ref_z, ref_score, ref_project, ref_knn = reference(models, anchors, args.k)
        report("reference", ref_project, ref_knn, ref_score)

    print(f"max |projection difference| = {max(np.abs(a - b).max() for a, b in zip(our_z, ref_z)):.3e}")
    print(f"|score difference| = {abs(our_score - ref_score):.3e}")
    wall = (ref_project[1] + ref_knn[1]) / (our_project[1] + our_knn[1])
    print(f"speed-up in CPU time: projection {ref_project[0] / our_project[0]:.2f}, mutual kNN "
          f"{ref_knn[0] / our_knn[0]:.2f}; in wall time, both: {wall:.2f}")
    print(f"ratio: {(ref_project[0] + ref_knn[0]) / (our_project[0] + our_knn[0]):.2f}")


if __name__ == "__main__":
    main()
