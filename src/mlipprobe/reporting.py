"""Summaries of run folders: which checkpoints and embedding files a run or sweep wrote.

``python -m mlipprobe.reporting FOLDER`` prints one line per run with its strategy, final
test metrics and output files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run_folders(root: str | Path) -> list[Path]:
    """Run folders below ``root`` (those holding ``checkpoints/model.pt``)."""
    return sorted(p.parent.parent for p in Path(root).glob("**/checkpoints/model.pt"))


def summarize(root: str | Path) -> str:
    lines = []
    for folder in run_folders(root):
        metrics_file = folder / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        tests = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("test/"))
        lines.append(f"{folder}\n  test: {tests or 'n/a'}")
        for path in sorted(folder.glob("checkpoints/model.*")) + sorted(folder.glob("embeddings/*.h5")):
            lines.append(f"  {path}")
    if not lines:
        return f"No runs found under {root}"
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1] if len(sys.argv) > 1 else "outputs"))
