"""Side-by-side timing of mlipprobe's torch GFRE/LFRE against scikit-matter's.

Both run in this process on the same synthetic float64 arrays, the same explicit
train/test split and the same ``n_local_points``, with the same number of threads
(torch's intra-op threads and scikit-matter's BLAS threads, set with threadpoolctl).
Y is a nonlinear function of X plus noise; X itself has a low-dimensional latent
structure, as atomic features do. Wall and process CPU times are printed with the load
average, as the machine may be shared. Our LFRE's time inside LAPACK (the symmetric
eigendecompositions, three per test point) is printed too, with the ratio that would
remain if everything else took no time: no implementation that needs those
decompositions can beat it on this machine. The last line printed is
``ratio: <skmatter LFRE wall time / our LFRE wall time>``.

Example::

    python benchmarks/bench_reconstruction.py              # 20,000 train / 1,000 test, 128 -> 256
    python benchmarks/bench_reconstruction.py --threads 1  # both single-threaded
    python benchmarks/bench_reconstruction.py --quick      # 4,000 / 100, for development
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from skmatter.metrics import (
    pointwise_global_reconstruction_error,
    pointwise_local_reconstruction_error,
)
from threadpoolctl import threadpool_limits

from mlipprobe.analysis import pointwise_gfre, pointwise_lfre, reconstruction


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
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="threads for both implementations (default: torch's, i.e. the cores)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="4,000 train / 100 test points, for development"
    )
    parser.add_argument(
        "--skmatter-test-subset",
        type=int,
        default=None,
        help="time scikit-matter's LFRE on the first N test points only and extrapolate "
        "its time linearly to all of them (default: all test points)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test = 4_000, 100
    return args


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
    """(result, wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


class LapackTimer:
    """Wall time spent in the LAPACK decompositions of ``reconstruction`` while active."""

    names = ("_eigh", "_svd")

    def __enter__(self):
        self.seconds, self.calls, self.originals = 0.0, 0, {}
        for name in self.names:
            self.originals[name] = original = getattr(reconstruction, name)
            setattr(reconstruction, name, self._timed(original))
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(reconstruction, name, original)

    def _timed(self, function):
        def timed_function(A):
            start = time.perf_counter()
            result = function(A)
            self.seconds += time.perf_counter() - start
            self.calls += len(A)
            return result

        return timed_function


def rms(errors):
    return float(np.sqrt(np.mean(errors**2)))


def report(name, who, errors, wall, cpu):
    print(f"{name}  {who:8s} {rms(errors):.10f} in {wall:8.3f} s (CPU {cpu:8.3f} s)")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    X, Y = synthetic_features(args.n_train + args.n_test, args.dim_x, args.dim_y, args.seed)
    train_idx = np.arange(args.n_train)
    test_idx = np.arange(args.n_train, args.n_train + args.n_test)
    k = args.n_local_points or min(args.dim_x, args.dim_y)
    print(
        f"n_train={args.n_train} n_test={args.n_test} dim_x={args.dim_x} "
        f"dim_y={args.dim_y} n_local_points={k} dtype=float64 device={args.device} "
        f"threads={args.threads} (torch and BLAS) cpus={os.cpu_count()} "
        f"load_average={os.getloadavg()[0]:.2f}"
    )
    split = dict(train_idx=train_idx, test_idx=test_idx)
    ours = dict(device=args.device, **split)

    with threadpool_limits(args.threads):
        ours_g, *t_ours_g = timed(pointwise_gfre, X, Y, **ours)
        sk_g, *t_sk_g = timed(pointwise_global_reconstruction_error, X, Y, **split)
        report("GFRE", "ours", ours_g, *t_ours_g)
        report("GFRE", "skmatter", sk_g, *t_sk_g)
        print(f"GFRE  max |pointwise difference| = {np.abs(ours_g - sk_g).max():.3e}")

        with LapackTimer() as lapack:
            ours_l, *t_ours_l = timed(
                pointwise_lfre, X, Y, k, batch_size=args.batch_size, **ours
            )
        subset = min(args.skmatter_test_subset or args.n_test, args.n_test)
        sk_l, *t_sk_l = timed(
            pointwise_local_reconstruction_error,
            X,
            Y,
            k,
            train_idx=train_idx,
            test_idx=test_idx[:subset],
        )
    report("LFRE", "ours", ours_l, *t_ours_l)
    if subset < args.n_test:
        measured, t_sk_l = t_sk_l, [t * args.n_test / subset for t in t_sk_l]
        print(
            f"LFRE  skmatter timed on the first {subset} of {args.n_test} test points "
            f"({measured[0]:.3f} s), extrapolated linearly to {t_sk_l[0]:.3f} s; "
            f"its LFRE over those points {rms(sk_l):.10f} (ours {rms(ours_l[:subset]):.10f})"
        )
    else:
        report("LFRE", "skmatter", sk_l, *t_sk_l)
    relative = np.abs(ours_l[:subset] - sk_l) / np.abs(sk_l)
    print(
        f"LFRE  max |pointwise difference| = {np.abs(ours_l[:subset] - sk_l).max():.3e} "
        f"(relative {relative.max():.3e}) over {subset} test points"
    )
    print(
        f"LFRE  ours spent {lapack.seconds:.3f} s of {t_ours_l[0]:.3f} s in LAPACK "
        f"({lapack.calls} symmetric eigendecompositions/SVDs); skmatter / that time = "
        f"{t_sk_l[0] / lapack.seconds:.2f}, the ratio if nothing else took any time"
    )
    print(f"load_average={os.getloadavg()[0]:.2f} at the end")
    print(f"GFRE speed-up (skmatter / ours, wall): {t_sk_g[0] / t_ours_g[0]:.2f}")
    print(f"LFRE speed-up (skmatter / ours, CPU): {t_sk_l[1] / t_ours_l[1]:.2f}")
    print(f"ratio: {t_sk_l[0] / t_ours_l[0]:.2f}")


if __name__ == "__main__":
    main()
