"""What ``probe.py`` runs: compare checkpoints' embeddings and probe what they encode.

Report folder (``<paths.output_dir>/report``, written whole or not at all)::

    report.md                         what was compared, every table, every figure
    tables/{gfre,lfre,nonlinear}_<kind>.{csv,json}   ordered-pair matrices (row X -> column Y)
    tables/probes.csv, tables/cpd.csv, tables/cumulants.csv
    figures/{gfre,lfre,nonlinear}_<kind>.png          annotated heatmaps
    figures/pcovr_<kind>.png                          PCovR maps coloured by the target
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from mlipprobe import reporting
from mlipprobe.analysis import composition_matrix, cpd_scores, gfre, lfre, structure_cumulants
from mlipprobe.comparison import (
    EmbeddingSet,
    check_same_atoms,
    find_embedding_files,
    load_embedding_sets,
    pair_matrix,
)
from mlipprobe.io import atomic_directory

log = logging.getLogger(__name__)


def _write_rows(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def load_targets(sets: list[EmbeddingSet], structure_index: np.ndarray, cfg: DictConfig):
    """Targets from the embedded data file: per structure (rows in sorted structure order,
    from ``atoms.info``), per atom (rows as in the embedding files, from ``atoms.arrays``)
    and per-structure 3-vectors (``atoms.info``, probed equivariantly from L=1 features)."""
    from mlipprobe.data.readers import KeyMap, read_structures

    path = cfg.data.path or sets[0].attrs.get("dataset")
    if not path or not (cfg.data.targets or cfg.data.atom_targets or cfg.data.vector_targets):
        return {}, {}, {}
    targets = {name: {"key": name} for name in cfg.data.targets}
    targets.update({name: {"key": name, "per_atom": True} for name in cfg.data.atom_targets})
    targets.update({name: {"key": name, "vector": True} for name in cfg.data.vector_targets})
    structures = read_structures(path, KeyMap.from_config({"energy": None, "targets": targets}))
    if structure_index.max() >= len(structures):
        raise ValueError(f"The embeddings refer to structure {structure_index.max()} but {path} has {len(structures)}")
    _, first_rows = np.unique(structure_index, return_index=True)
    in_file_order = structure_index[np.sort(first_rows)]
    per_structure = {name: np.array([structures[i].info[name][0] for i in np.unique(structure_index)])
                     for name in cfg.data.targets}
    per_atom = {name: np.concatenate([structures[i].arrays[name][:, 0] for i in in_file_order])
                for name in cfg.data.atom_targets}
    for name, values in per_atom.items():
        if len(values) != len(structure_index):
            raise ValueError(f"Per-atom target '{name}' of {path} has {len(values)} rows, the embeddings {len(structure_index)}")
    vectors = {name: np.stack([structures[i].info[name] for i in np.unique(structure_index)])
               for name in cfg.data.vector_targets}
    return per_structure, per_atom, vectors


def reconstruction_section(sets, kind, rows, cfg, output_dir: Path) -> list[str]:
    labels = [s.label for s in sets]
    measures = {}
    if cfg.reconstruction.gfre:
        measures["gfre"] = ("GFRE", lambda x, y: gfre(x, y))
    if cfg.reconstruction.lfre:
        k = cfg.reconstruction.n_local_points
        measures["lfre"] = ("LFRE", lambda x, y: lfre(x, y, k))
    if cfg.reconstruction.nonlinear:
        from mlipprobe.probes.fit import reconstruction_error

        hidden = list(cfg.reconstruction.hidden)
        measures["nonlinear"] = (
            "nonlinear (MLP) reconstruction error",
            lambda x, y: reconstruction_error(x, y, hidden=hidden, accelerator=cfg.accelerator,
                                              max_epochs=cfg.reconstruction.max_epochs),
        )
    lines = []
    for name, (title, measure) in measures.items():
        log.info("%s matrix on %s features of %d checkpoints", title, kind, len(sets))
        matrix = pair_matrix(sets, kind, measure, rows)
        reporting.write_matrix(matrix, labels, output_dir / "tables" / f"{name}_{kind}")
        figure = reporting.heatmap(matrix, labels, f"{title}, {kind} features", output_dir / "figures" / f"{name}_{kind}.png")
        lines += [f"### {title}: `{kind}` features", "", f"![{name} {kind}](figures/{figure.name})", "",
                  reporting.matrix_table(matrix, labels), ""]
    return lines


def invariant_features(kind: str, features: np.ndarray) -> np.ndarray:
    """Per-irrep routing: an L>0 slice ``layer{i}_L{l}`` (mul x (2l+1) components, e3nn
    layout) enters scalar probes through its rotation-invariant channel norms."""
    match = re.fullmatch(r"layer\d+_L(\d+)", kind)
    if not match or int(match.group(1)) == 0:
        return features
    width = 2 * int(match.group(1)) + 1
    return np.linalg.norm(features.reshape(len(features), -1, width), axis=-1)


def structure_features(entry: EmbeddingSet, kind: str, structure_index: np.ndarray, cfg: DictConfig) -> np.ndarray:
    """Invariant per-atom features pooled per structure (``cfg.probes.pooling``)."""
    from mlipprobe.probes.fit import pool_features

    pooled, _ = pool_features(invariant_features(kind, entry.features(kind)), structure_index, cfg.probes.pooling)
    return pooled


def linear_and_mlp_scores(x: np.ndarray, y: np.ndarray, cfg: DictConfig) -> dict[str, float]:
    """Cross-validated R2 and MAE of the linear and the MLP probe."""
    from mlipprobe.probes.fit import probe_scores

    row = {}
    for probe, hidden in (("linear", None), ("mlp", list(cfg.probes.hidden))):
        scores = probe_scores(x, y, hidden=hidden, n_splits=cfg.probes.cv, seed=cfg.seed, accelerator=cfg.accelerator)
        row[f"{probe}_r2"], row[f"{probe}_mae"] = scores["r2_mean"], scores["mae_mean"]
    return row


def atom_probe_rows(sets, kind, atom_targets, rows, cfg) -> list[dict]:
    """Linear and MLP probes of per-atom targets from per-atom features."""
    table = []
    for entry in sets:
        atomic = invariant_features(kind, entry.features(kind))
        for name, y in atom_targets.items():
            x, t = (atomic, y) if rows is None else (atomic[rows], y[rows])
            table.append({"checkpoint": entry.label, "features": kind, "target": f"{name} (per atom)",
                          **linear_and_mlp_scores(x, t, cfg)})
    return table


def vector_probe_rows(sets, kind, structure_index, vector_targets, cfg) -> list[dict]:
    """Per-irrep routing: vector targets from L=1 features with an equivariant linear probe."""
    from mlipprobe.probes.fit import vector_probe_scores

    table = []
    for entry in sets:
        for name, Y in vector_targets.items():
            scores = vector_probe_scores(entry.features(kind), structure_index, Y, n_splits=cfg.probes.cv, seed=cfg.seed)
            table.append({"checkpoint": entry.label, "features": kind, "target": f"{name} (vector, equivariant)",
                          "linear_r2": scores["r2_mean"], "linear_mae": scores["mae_mean"]})
    return table


def probe_rows(sets, kind, structure_index, numbers, targets, cfg) -> tuple[list[dict], list[dict]]:
    probes, cpd = [], []
    composition, _ = composition_matrix(numbers, structure_index)
    for entry in sets:
        pooled = structure_features(entry, kind, structure_index, cfg)
        for name, y in targets.items():
            probes.append({"checkpoint": entry.label, "features": kind, "target": name,
                           **linear_and_mlp_scores(pooled, y, cfg)})
            if cfg.cpd.enabled:
                scores = cpd_scores(pooled, composition, y, probes=tuple(cfg.cpd.probes), cv=cfg.probes.cv, random_state=cfg.seed)
                cpd.append({"checkpoint": entry.label, "features": kind, "target": name,
                            **{k: float(v) for k, v in scores.items() if not k.endswith("_std")}})
    return probes, cpd


def cumulant_rows(sets, kind, structure_index, cfg) -> list[dict]:
    """Progressive GFRE between cumulant descriptors of orders k and k+1, and 1 and K."""
    order = int(cfg.cumulants.order)
    rows = []
    for entry in sets:
        features = entry.features(kind)
        descriptors = {k: structure_cumulants(features, structure_index, k) for k in range(1, order + 1)}
        row = {"checkpoint": entry.label, "features": kind}
        for k in range(1, order):
            row[f"{k}->{k + 1}"] = gfre(descriptors[k], descriptors[k + 1])
        row[f"1->{order}"] = gfre(descriptors[1], descriptors[order])
        row[f"{order}->1"] = gfre(descriptors[order], descriptors[1])
        rows.append(row)
    return rows


def learning_curve_figure(sets, kind, structure_index, y, target, cfg, path: Path) -> tuple[Path, list[dict]]:
    """Test MAE of the linear probe against the number of training structures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from mlipprobe.probes.fit import learning_curve

    figure, axis = plt.subplots(figsize=(5, 3.6))
    rows = []
    for entry in sets:
        pooled = structure_features(entry, kind, structure_index, cfg)
        curve = learning_curve(pooled, y, tuple(cfg.probes.learning_curve), seed=cfg.seed, accelerator=cfg.accelerator)
        axis.plot([p["n_train"] for p in curve], [p["mae"] for p in curve], marker="o", label=entry.label)
        rows += [{"checkpoint": entry.label, "features": kind, "target": target, **p} for p in curve]
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("training structures")
    axis.set_ylabel(f"test MAE of the linear probe ({target})")
    axis.set_title(f"Sample efficiency, {kind} features", fontsize=10)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
    return path, rows


def pcovr_figure(sets, kind, structure_index, y, target, cfg, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skmatter.decomposition import PCovR
    from skmatter.preprocessing import StandardFlexibleScaler

    figure, axes = plt.subplots(1, len(sets), figsize=(3.2 * len(sets), 3.2), squeeze=False)
    scaled_y = (y - y.mean()) / (y.std() or 1.0)
    for axis, entry in zip(axes[0], sets):
        pooled = structure_features(entry, kind, structure_index, cfg)
        scaled = StandardFlexibleScaler(column_wise=False).fit_transform(pooled)
        projection = PCovR(mixing=cfg.pcovr.mixing, n_components=2).fit(scaled, scaled_y).transform(scaled)
        points = axis.scatter(projection[:, 0], projection[:, 1], c=y, s=8, cmap="plasma")
        axis.set_title(entry.label, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(points, ax=axes[0].tolist(), label=target)
    figure.suptitle(f"PCovR (mixing {cfg.pcovr.mixing}) of {kind} features", fontsize=10)
    figure.savefig(path, dpi=110, format="png", bbox_inches="tight")
    plt.close(figure)
    return path


def probe(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compare all embedding files of ``cfg.inputs``; write tables, figures, report.md."""
    report_dir = Path(cfg.paths.output_dir) / "report"
    with atomic_directory(report_dir) as work:
        sets = write_report(cfg, work)
    log.info("Report written to %s", report_dir / "report.md")
    if cfg.wandb.enabled:
        reporting.log_folder_to_wandb(report_dir, cfg.wandb.project, cfg.wandb.offline)
    return {}, {"report": report_dir / "report.md", "sets": sets}


def write_report(cfg: DictConfig, output_dir: Path) -> list[EmbeddingSet]:
    for folder in ("tables", "figures"):
        (output_dir / folder).mkdir()
    paths = find_embedding_files(cfg.inputs)
    sets = load_embedding_sets(paths)
    structure_index, numbers = check_same_atoms(sets)
    rng = np.random.default_rng(cfg.seed)
    n_atoms = len(structure_index)
    rows = None if n_atoms <= cfg.max_atoms else np.sort(rng.choice(n_atoms, cfg.max_atoms, replace=False))
    targets, atom_targets, vector_targets = load_targets(sets, structure_index, cfg)

    lines = [
        "# mlipprobe report", "",
        f"Compared {len(sets)} checkpoints on {n_atoms} atoms of {len(np.unique(structure_index))} structures "
        f"(dataset `{sets[0].attrs.get('dataset', '?')}`, split `{sets[0].attrs.get('split', '?')}`)"
        + (f"; reconstruction measures on a random subset of {cfg.max_atoms} atoms." if rows is not None else "."),
        "",
        reporting.markdown_table(
            [{"label": s.label, "role": s.attrs.get("role", ""),
              "strategy": "" if s.attrs.get("role") == "parent" else s.attrs.get("strategy", ""),
              "checkpoint": s.attrs.get("checkpoint", ""), "file": str(s.path)} for s in sets]
        ),
        "",
        "Reconstruction errors (GUIDE: Goscinski et al. 2021): entry (row X, column Y) is the error "
        "of reconstructing Y's features from X's on held-out atoms, after scaling; ~0 means X "
        "contains everything in Y, ~1 means nothing. GFRE is a global linear (ridge) map, LFRE "
        "a local one around each atom.",
        "",
    ]
    probe_table, cpd_table, cumulant_table, curve_table = [], [], [], []
    for kind in cfg.features:
        lines += [f"## `{kind}` features", ""]
        lines += reconstruction_section(sets, kind, rows, cfg, output_dir)
        if targets and cfg.probes.enabled:
            probes, cpd = probe_rows(sets, kind, structure_index, numbers, targets, cfg)
            probe_table += probes
            cpd_table += cpd
        if atom_targets and cfg.probes.enabled:
            probe_table += atom_probe_rows(sets, kind, atom_targets, rows, cfg)
        if vector_targets and cfg.probes.enabled and re.fullmatch(r"layer\d+_L1", kind):
            probe_table += vector_probe_rows(sets, kind, structure_index, vector_targets, cfg)
        if cfg.cumulants.order > 1:
            cumulant_table += cumulant_rows(sets, kind, structure_index, cfg)
        if targets and cfg.pcovr.target in targets:
            figure = pcovr_figure(sets, kind, structure_index, targets[cfg.pcovr.target], cfg.pcovr.target, cfg,
                                  output_dir / "figures" / f"pcovr_{kind}.png")
            lines += [f"![PCovR {kind}](figures/{figure.name})", ""]
        if targets and cfg.probes.enabled and cfg.probes.learning_curve:
            name = next(iter(targets))
            figure, rows_ = learning_curve_figure(sets, kind, structure_index, targets[name], name, cfg,
                                                  output_dir / "figures" / f"learning_curve_{kind}.png")
            curve_table += rows_
            lines += [f"![learning curve {kind}](figures/{figure.name})", ""]
    if probe_table:
        _write_rows(probe_table, output_dir / "tables" / "probes.csv")
        lines += ["## Probes", "",
                  f"Structure-level features ({cfg.probes.pooling} over atoms) -> target; {cfg.probes.cv}-fold "
                  "cross-validated R2 and MAE (target units) of a linear and an MLP probe.", "",
                  reporting.markdown_table(probe_table), ""]
    if curve_table:
        _write_rows(curve_table, output_dir / "tables" / "learning_curves.csv")
    if cpd_table:
        _write_rows(cpd_table, output_dir / "tables" / "cpd.csv")
        lines += ["## Composition projection decomposition", "",
                  "R2 of probes on the full features, on their composition part and on the geometric "
                  "residual (composition projected out). Linear (ridge) scores are the primary metric."
                  + (" **Warning:** gradient-boosted trees (gbt) inflate residual scores even on purely "
                     "compositional targets; do not read their r2_geom as geometric information."
                     if "gbt" in cfg.cpd.probes else ""), "",
                  reporting.markdown_table(cpd_table), ""]
    if cumulant_table:
        _write_rows(cumulant_table, output_dir / "tables" / "cumulants.csv")
        lines += ["## Cumulant descriptors", "",
                  "GFRE between structure descriptors built from cumulants of orders 1..k of the atomic "
                  "features: `k->k+1` measures what order k+1 adds; `K->1` ~0 checks the construction.", "",
                  reporting.markdown_table(cumulant_table), ""]
    (output_dir / "report.md").write_text("\n".join(lines))
    return sets
