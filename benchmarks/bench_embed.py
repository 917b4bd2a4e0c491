"""Batched feature extraction (ours) vs a loop over mace's ``MACECalculator.get_descriptors``.

Both run on the same MACE model and the same QM9 molecules in one process; we check that
the features agree and print structures/s of each, then ``ratio: <ours / calculator loop>``.

    python benchmarks/bench_embed.py [--n 500] [--batch-size 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def calculator_loop(calculator, structures) -> np.ndarray:
    return np.concatenate([calculator.get_descriptors(atoms, invariants_only=True) for atoms in structures])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=ROOT / "checkpoints" / "demo_mace_parent.pt")
    parser.add_argument("--data", default=ROOT / "data" / "qm9_demo.extxyz")
    parser.add_argument("--n", type=int, default=500, help="number of molecules")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()

    from mlipprobe import load_backbone

    structures = ase.io.read(args.data, index=f":{args.n}")
    backbone = load_backbone(args.checkpoint, dtype=args.dtype).to(args.device)
    model_file = Path(tempfile.mkdtemp()) / "bench.model"
    backbone.export(model_file)

    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    from mace.calculators import MACECalculator

    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # mace unpickles our own export
    calculator = MACECalculator(model_paths=str(model_file), device=args.device, default_dtype=args.dtype)
    if previous is None:
        os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")

    backbone.embed(structures[:8], batch_size=args.batch_size, features=["backbone"])  # warm-up
    calculator_loop(calculator, structures[:8])

    start = time.perf_counter()
    ours = backbone.embed(structures, batch_size=args.batch_size, features=["backbone"])["backbone"]
    if args.device == "cuda":
        torch.cuda.synchronize()
    ours_time = time.perf_counter() - start

    start = time.perf_counter()
    reference = calculator_loop(calculator, structures)
    reference_time = time.perf_counter() - start

    print(f"device: {args.device}, dtype: {args.dtype}, molecules: {len(structures)}, atoms: {len(ours)}")
    print(f"max |ours - get_descriptors|: {np.abs(ours - reference).max():.3e}")
    print(f"ours (batched, batch_size={args.batch_size}): {len(structures) / ours_time:.1f} structures/s")
    print(f"MACECalculator.get_descriptors loop: {len(structures) / reference_time:.1f} structures/s")
    print(f"ratio: {reference_time / ours_time:.2f}")


if __name__ == "__main__":
    main()
