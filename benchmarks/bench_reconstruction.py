"""Side-by-side timing of mlipprobe's torch GFRE/LFRE against scikit-matter's.

Both run in this process on the same synthetic arrays and the same explicit train/test
split. Y is a nonlinear function of X plus noise; X itself has a low-dimensional latent
structure, as atomic features do. The last line printed is
``ratio: <skmatter LFRE time / our LFRE time>``.

Example::

    python benchmarks/bench_reconstruction.py                    # 20,000 train / 1,000 test
    python benchmarks/bench_reconstruction.py --skmatter-test-subset 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skmatter.metrics import (
    pointwise_global_reconstruction_error,
    pointwise_local_reconstruction_error,
)

from mlipprobe.analysis import pointwise_gfre, pointwise_lfre


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=1_000)
    parser.add_argument("--dim-x", type=int, default=128)
    parser.add_argument("--dim-y", type=int, default=256)
    parser.add_argument(
        "--n-local-points", type=int, default=None, help="default: min(dim-x, dim-y)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="our LFRE batch size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skmatter-test-subset",
        type=int,
        default=None,
        help="time scikit-matter's LFRE on the first N test points only and extrapolate "
        "its time linearly to all of them (default: all test points)",
    )
    return parser.parse_args(argv)


def synthetic_features(n_samples, dim_x, dim_y, seed):
    """X: smooth features of a 16-d latent; Y: a nonlinear function of X plus noise."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_samples, 16))
    X = np.tanh(latent @ rng.normal(size=(16, dim_x)) / 4) + 0.01 * rng.normal(
        size=(n_samples, dim_x)
    )
    hidden = np.tanh(X @ rng.normal(size=(dim_x, 64)) / np.sqrt(dim_x))
    Y = hidden @ rng.normal(size=(64, dim_y)) + 0.5 * (X @ rng.normal(size=(dim_x, dim_y)))
    Y += 0.05 * Y.std() * rng.normal(size=Y.shape)
    return X, Y


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def rms(errors):
    return float(np.sqrt(np.mean(errors**2)))


def main(argv=None):
    args = parse_args(argv)
    X, Y = synthetic_features(args.n_train + args.n_test, args.dim_x, args.dim_y, args.seed)
    train_idx = np.arange(args.n_train)
    test_idx = np.arange(args.n_train, args.n_train + args.n_test)
    k = args.n_local_points or min(args.dim_x, args.dim_y)
    print(
        f"n_train={args.n_train} n_test={args.n_test} dim_x={args.dim_x} "
        f"dim_y={args.dim_y} n_local_points={k} device={args.device} "
        f"torch_threads={torch.get_num_threads()}"
    )
    split = dict(train_idx=train_idx, test_idx=test_idx)

    ours_g, t_ours_g = timed(pointwise_gfre, X, Y, device=args.device, **split)
    sk_g, t_sk_g = timed(pointwise_global_reconstruction_error, X, Y, **split)
    print(f"GFRE  ours {rms(ours_g):.10f} in {t_ours_g:8.3f} s")
    print(f"GFRE  skmatter {rms(sk_g):.10f} in {t_sk_g:8.3f} s")
    print(f"GFRE  max |pointwise difference| = {np.abs(ours_g - sk_g).max():.3e}")

    ours_l, t_ours_l = timed(
        pointwise_lfre, X, Y, k, device=args.device, batch_size=args.batch_size, **split
    )
    subset = min(args.skmatter_test_subset or args.n_test, args.n_test)
    sk_l, t_sk_l = timed(
        pointwise_local_reconstruction_error,
        X,
        Y,
        k,
        train_idx=train_idx,
        test_idx=test_idx[:subset],
    )
    print(f"LFRE  ours {rms(ours_l):.10f} in {t_ours_l:8.3f} s")
    if subset < args.n_test:
        measured, t_sk_l = t_sk_l, t_sk_l * args.n_test / subset
        print(
            f"LFRE  skmatter timed on the first {subset} of {args.n_test} test points "
            f"({measured:.3f} s), extrapolated linearly to {t_sk_l:.3f} s; "
            f"its LFRE over those points {rms(sk_l):.10f} (ours {rms(ours_l[:subset]):.10f})"
        )
    else:
        print(f"LFRE  skmatter {rms(sk_l):.10f} in {t_sk_l:8.3f} s")
    print(
        f"LFRE  max |pointwise difference| = {np.abs(ours_l[:subset] - sk_l).max():.3e} "
        f"over {subset} test points"
    )
    print(f"GFRE speed-up (skmatter / ours): {t_sk_g / t_ours_g:.2f}")
    print(f"ratio: {t_sk_l / t_ours_l:.2f}")


if __name__ == "__main__":
    main()
