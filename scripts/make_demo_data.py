"""Write data/qm9_demo.extxyz: 1000 QM9 molecules drawn with seed 0 (see data/README.md).

    python scripts/make_demo_data.py [--n 1000] [--seed 0] [--output data/qm9_demo.extxyz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ase.io
import numpy as np

from mlipprobe.data.qm9 import N_MOLECULES, read_qm9
from mlipprobe.io import atomic_path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=ROOT / "data" / "qm9_demo.extxyz")
    args = parser.parse_args()
    indices = np.sort(np.random.default_rng(args.seed).choice(N_MOLECULES, size=args.n, replace=False))
    molecules = read_qm9(indices)
    for atoms in molecules:
        atoms.info["energy"] = atoms.info["U0"]
        del atoms.info["smiles"]  # free text does not round-trip through extxyz comments
    with atomic_path(args.output) as temporary:
        ase.io.write(temporary, molecules, format="extxyz")


if __name__ == "__main__":
    main()
