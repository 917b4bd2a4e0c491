"""Tables (CSV, JSON, markdown), annotated heatmaps, and logging a report folder to wandb."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mlipprobe.io import atomic_path


# --- tables -------------------------------------------------------------------------------
def write_matrix(matrix: np.ndarray, labels: Sequence[str], path: str | Path) -> tuple[Path, Path]:
    """``path.csv`` (rows: source X, columns: target Y) and ``path.json``."""
    path = Path(path)
    with atomic_path(path.with_suffix(".csv")) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["X \\ Y", *labels])
            for label, row in zip(labels, matrix):
                writer.writerow([label, *(f"{v:.6g}" for v in row)])
    with atomic_path(path.with_suffix(".json")) as temporary:
        temporary.write_text(json.dumps({"labels": list(labels), "matrix": matrix.tolist()}, indent=1))
    return path.with_suffix(".csv"), path.with_suffix(".json")


def write_rows(rows: Sequence[Mapping], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """A CSV of dictionaries, written atomically; ``columns`` (default: every key, in order
    of first appearance) must hold every key, and a row's missing keys are left blank."""
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A markdown table of dictionaries (floats rounded to ``digits`` significant digits)."""
    if not rows:
        return "_(empty)_"
    columns = list(columns or rows[0].keys())
    fmt = lambda v: f"{v:.{digits}g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def matrix_table(matrix: np.ndarray, labels: Sequence[str]) -> str:
    rows = [{"X \\ Y": label, **{other: float(v) for other, v in zip(labels, row)}} for label, row in zip(labels, matrix)]
    return markdown_table(rows, ["X \\ Y", *labels])


# --- figures ------------------------------------------------------------------------------
def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str, path: str | Path, *,
            axis_labels: tuple[str, str] = ("source X", "reconstructed Y"),
            column_labels: Sequence[str] | None = None) -> Path:
    """Annotated heatmap: row = source features X, column = reconstructed features Y
    (``axis_labels`` = (rows, columns) for other pair measures; ``column_labels`` when the
    columns are not the rows). NaN entries are left blank."""
    plt = pyplot()
    columns = list(labels if column_labels is None else column_labels)
    n, m = len(labels), len(columns)
    figure, axes = plt.subplots(figsize=(1.2 * m + 2.5 + 0.06 * max(map(len, labels)), 1.0 * n + 1.8))
    image = axes.imshow(matrix, cmap="viridis_r", vmin=0, vmax=max(1e-9, float(np.nanmax(matrix))))
    axes.set_xticks(range(m), columns, rotation=35, ha="right")
    axes.set_yticks(range(n), labels)
    axes.set_xlabel(axis_labels[1])
    axes.set_ylabel(axis_labels[0])
    axes.set_title(title)
    threshold = 0.5 * float(np.nanmax(matrix))
    for i in range(n):
        for j in range(m):
            if np.isnan(matrix[i, j]):
                continue
            color = "white" if matrix[i, j] > threshold else "black"
            axes.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", color=color, fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.8)
    figure.tight_layout()
    return save_figure(figure, path)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: int = 120, **savefig_options) -> Path:
    """Write ``figure`` as a PNG (atomically) and close it."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format="png", **savefig_options)
    pyplot().close(figure)
    return path


# --- wandb ----------------------------------------------------------------------------------
def log_folder_to_wandb(folder: str | Path, project: str, offline: bool, name: str | None = None,
                        group: str | None = None) -> Path:
    """Log every table (CSV) and figure (PNG) of a report folder as one wandb run (in ``group``:
    the sweep's name, to sit beside the sweep's training runs)."""
    import wandb

    folder = Path(folder)
    run = wandb.init(project=project, dir=str(folder), name=name or folder.name, job_type="probe",
                     group=group, mode="offline" if offline else "online")
    try:
        for table in sorted(folder.glob("tables/*.csv")):
            with open(table, newline="") as handle:
                rows = list(csv.reader(handle))
            run.log({f"tables/{table.stem}": wandb.Table(columns=rows[0], data=rows[1:])})
        for figure in sorted(folder.glob("figures/*.png")):
            run.log({f"figures/{figure.stem}": wandb.Image(str(figure))})
        return Path(run.dir)
    finally:
        wandb.finish()
