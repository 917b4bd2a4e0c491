"""PET feature extraction: our batched API vs calling the metatrain model per structure.

Both use the same PET checkpoint (by default the bundled demo parent, written by
``mtt train``) and the same QM9 molecules in one process. The reference is what a
hand-written script does: metatrain's ``load_model``, one ``System`` with neighbour lists
per molecule, one ``model(...)`` call each, asking for the ``"feature"`` output. We check
that the features agree and print structures/s of each, then ``ratio: <ours / per-structure>``.

    python benchmarks/bench_embed_pet.py [--n 500] [--batch-size 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ase.io
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def per_structure_loop(model, structures, dtype, device) -> np.ndarray:
    from metatomic.torch import ModelOutput, systems_to_torch
    from metatrain.utils.neighbor_lists import get_system_with_neighbor_lists

    outputs = {"feature": ModelOutput(sample_kind="atom")}
    rows = []
    with torch.no_grad():
        for atoms in structures:
            system = systems_to_torch(atoms, dtype=dtype)
            system = get_system_with_neighbor_lists(system, model.requested_neighbor_lists()).to(device=device)
            rows.append(model([system], outputs)["feature"].block().values.cpu().numpy())
    return np.concatenate(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=ROOT / "checkpoints" / "demo_pet_parent.ckpt",
                        help="a metatrain .ckpt (loaded with trusted=True: only files you trust)")
    parser.add_argument("--data", default=ROOT / "data" / "qm9_demo.extxyz")
    parser.add_argument("--n", type=int, default=500, help="number of molecules")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()

    from metatrain.utils.io import load_model

    from mlipprobe import load_backbone

    dtype = getattr(torch, args.dtype)
    structures = ase.io.read(args.data, index=f":{args.n}")
    backbone = load_backbone(args.checkpoint, trusted=True, dtype=args.dtype).to(args.device)
    model = load_model(str(args.checkpoint)).to(device=args.device, dtype=dtype).eval()

    backbone.embed(structures[:8], batch_size=args.batch_size, features=["backbone"])  # warm-up
    per_structure_loop(model, structures[:8], dtype, args.device)

    start = time.perf_counter()
    ours = backbone.embed(structures, batch_size=args.batch_size, features=["backbone"])["backbone"]
    if args.device == "cuda":
        torch.cuda.synchronize()
    ours_time = time.perf_counter() - start

    start = time.perf_counter()
    reference = per_structure_loop(model, structures, dtype, args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    reference_time = time.perf_counter() - start

    print(f"device: {args.device}, dtype: {args.dtype}, molecules: {len(structures)}, atoms: {len(ours)}, "
          f"threads: {torch.get_num_threads()}")
    print(f"max |ours - metatrain 'feature'|: {np.abs(ours - reference).max():.3e}")
    print(f"ours (batched, batch_size={args.batch_size}): {len(structures) / ours_time:.1f} structures/s")
    print(f"metatrain model, one structure per call: {len(structures) / reference_time:.1f} structures/s")
    print(f"ratio: {reference_time / ours_time:.2f}")


if __name__ == "__main__":
    main()
