"""What ``probe.py`` runs: compare checkpoints' embeddings and probe what they encode.

Report folder (``<paths.output_dir>/report``, written whole or not at all)::

    report.md                         what was compared, every table, every figure
    tables/{gfre,lfre,nonlinear}_<kind>.{csv,json}   ordered-pair matrices (row X -> column Y)
    tables/lfre_median_<kind>.{csv,json}, lfre_worst_atoms_<kind>.csv   LFRE's spread over atoms
    tables/probes.csv, tables/cpd.csv, tables/cumulants.csv
    tables/anchors_<kind>.{json,csv}                  common space: the anchor atoms (reusable)
    tables/{mutual_knn,cka,procrustes}_{common,raw}_<kind>.{csv,json}, ot_common_<kind>.*
    tables/atypicality_<kind>.csv, atypicality_atoms_<kind>.csv   per structure, per atom
    figures/{gfre,lfre,nonlinear}_<kind>.png          annotated heatmaps
    figures/{mutual_knn,cka,procrustes,ot}_*_<kind>.png   common-space alignment heatmaps
    figures/pcovr_<kind>.png                          PCovR maps coloured by the target
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols
from omegaconf import DictConfig

from mlipprobe import pretraining_bias, reporting
from mlipprobe.analysis import (
    alignment_matrices,
    anchor_project,
    atypicality,
    composition_matrix,
    cpd_scores,
    direct_anchors,
    gfre,
    ot_cost,
    pointwise_lfre,
    reconstruction_split,
    structure_atypicality,
    structure_cumulants,
)
from mlipprobe.analysis.reconstruction import root_mean_square
from mlipprobe.comparison import (
    EmbeddingSet,
    atom_subset,
    check_same_atoms,
    find_embedding_files,
    load_embedding_sets,
    pair_values,
)
from mlipprobe.io import atomic_directory, atomic_path

log = logging.getLogger(__name__)


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


def reconstruction_section(sets, kind, rows, atoms, cfg, output_dir: Path, names=None) -> list[str]:
    """GFRE/LFRE/nonlinear matrices: ``names`` (default: those switched on in ``cfg.reconstruction``);
    ``atoms`` = (structure_index, atomic_numbers) of the files' rows."""
    labels = [s.label for s in sets]
    names = [n for n in ("gfre", "lfre", "nonlinear") if cfg.reconstruction[n]] if names is None else list(names)
    measures = {}
    if "gfre" in names:
        measures["gfre"] = ("GFRE", lambda x, y: gfre(x, y))
    if "lfre" in names:
        k = cfg.reconstruction.n_local_points
        measures["lfre"] = ("LFRE", lambda x, y: pointwise_lfre(x, y, k))
    if "nonlinear" in names:
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
        values = pair_values(sets, kind, measure, rows)
        matrix = np.array([[root_mean_square(v) if name == "lfre" else v for v in row] for row in values])
        reporting.write_matrix(matrix, labels, output_dir / "tables" / f"{name}_{kind}")
        figure = reporting.heatmap(matrix, labels, f"{title}, {kind} features", output_dir / "figures" / f"{name}_{kind}.png")
        lines += [f"### {title}: `{kind}` features", "", f"![{name} {kind}](figures/{figure.name})", "",
                  reporting.matrix_table(matrix, labels), ""]
        if name == "lfre":
            lines += lfre_spread_section(labels, kind, rows, atoms, matrix, values, output_dir)
    return lines


def lfre_spread_section(labels, kind, rows, atoms, matrix, pointwise, output_dir: Path, worst: int = 5) -> list[str]:
    """Median of the pointwise LFRE per ordered pair, and each pair's worst atoms.

    LFRE is a root mean square over test atoms, and a few badly reconstructed atoms can
    dominate it: typically atoms of a rare element or environment, whose nearest training
    atoms are unlike them (a nitrogen among hydrogens), so that the local ridge
    extrapolates. The median shows the typical atom. ``pointwise[i][j]``: the errors of
    reconstructing checkpoint j's features from i's, per test atom.
    """
    median = np.array([[np.median(errors) for errors in row] for row in pointwise])
    reporting.write_matrix(median, labels, output_dir / "tables" / f"lfre_median_{kind}")
    structure_index, numbers = atoms
    test_rows = reconstruction_split(len(structure_index) if rows is None else len(rows))[1]
    test_rows = test_rows if rows is None else rows[test_rows]
    table, dominated, dominating = [], [], Counter()
    for (i, source), (j, target) in itertools.product(enumerate(labels), repeat=2):
        errors = pointwise[i][j]
        worst_atoms = np.argsort(-errors)[:worst]
        table += [{"X": source, "Y": target, "row": int(row), "structure_index": int(structure_index[row]),
                   "atomic_number": int(numbers[row]), "lfre": float(errors[atom])}
                  for atom, row in zip(worst_atoms, test_rows[worst_atoms])]
        if matrix[i, j] > 2 * median[i, j] and matrix[i, j] > 0.05:
            dominated.append(f"{source} -> {target} ({matrix[i, j]:.3g} vs median {median[i, j]:.3g})")
            dominating.update(chemical_symbols[z] for z in numbers[test_rows[worst_atoms]])
    reporting.write_rows(table, output_dir / "tables" / f"lfre_worst_atoms_{kind}.csv")
    lines = ["LFRE is the root mean square of per-atom errors; their median per pair (the typical atom):", "",
             reporting.matrix_table(median, labels), ""]
    if dominated:
        elements = ", ".join(f"{symbol} {count}" for symbol, count in dominating.most_common())
        lines += [f"Where LFRE is more than twice the median, a few atoms dominate it: {'; '.join(dominated)}. "
                  f"Elements of those pairs' {worst} worst atoms: {elements}. Such atoms typically belong to a rare "
                  "element or environment: their nearest training atoms are unlike them and the local fit extrapolates. The "
                  f"{worst} worst atoms of every pair are in `tables/lfre_worst_atoms_{kind}.csv`.", ""]
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
    import matplotlib.ticker

    from mlipprobe.probes.fit import learning_curve

    figure, axis = reporting.pyplot().subplots(figsize=(5, 3.6))
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
    return reporting.save_figure(figure, path, dpi=110), rows


def pcovr_figure(sets, kind, structure_index, y, target, cfg, path: Path) -> Path:
    from skmatter.decomposition import PCovR
    from skmatter.preprocessing import StandardFlexibleScaler

    figure, axes = reporting.pyplot().subplots(1, len(sets), figsize=(3.2 * len(sets), 3.2), squeeze=False)
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
    return reporting.save_figure(figure, path, dpi=110, bbox_inches="tight")


# --- common latent space: anchors, alignment, atypicality ----------------------------------
class AnchorMismatchError(ValueError):
    """A saved anchors file whose atoms are not the atoms of these embedding files."""


def reference_set(sets: list[EmbeddingSet], label: str | None) -> EmbeddingSet:
    """The checkpoint that chooses the anchors: ``label``, else the parent, else the first."""
    if label is None:
        return next((s for s in sets if s.attrs.get("role") == "parent"), sets[0])
    for entry in sets:
        if entry.label == label:
            return entry
    raise ValueError(f"common_space.reference='{label}' is none of the checkpoints {[s.label for s in sets]}")


def anchor_record(anchors, reference: EmbeddingSet, kind: str, structure_index, numbers) -> dict:
    """What identifies the anchor atoms, for ``common_space.anchors=`` in a later run."""
    return {"reference": reference.label, "checkpoint": str(reference.attrs.get("checkpoint", "")),
            "checkpoint_sha256": str(reference.attrs.get("checkpoint_sha256", "")), "features": kind,
            "dataset": str(reference.attrs.get("dataset", "")), "n_atoms": len(structure_index),
            "anchors": [{"row": int(r), "structure_index": int(structure_index[r]), "atomic_number": int(numbers[r])}
                        for r in anchors]}


def load_anchor_rows(path: str | Path, structure_index: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Rows of a saved anchors file; refused unless every anchor is the same atom here."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Anchors file {path} (common_space.anchors) does not exist")
    try:
        anchors = json.loads(path.read_text())["anchors"]
        rows = np.array([int(a["row"]) for a in anchors], dtype=np.int64)
        saved = [(int(a["structure_index"]), int(a["atomic_number"])) for a in anchors]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not an anchors file written by probe.py (tables/anchors_<kind>.json): {error!r}") from None
    for i, (row, (structure, z)) in enumerate(zip(rows, saved)):
        if not 0 <= row < len(structure_index):
            raise AnchorMismatchError(f"{path}: anchor {i} is row {row} but the embeddings have {len(structure_index)} "
                                      "atoms: these anchors were chosen on other atoms")
        if (structure_index[row], numbers[row]) != (structure, z):
            raise AnchorMismatchError(
                f"{path}: anchor {i} (row {row}) is atom Z={z} of structure {structure}, but row {row} here is "
                f"Z={numbers[row]} of structure {structure_index[row]}: these anchors were chosen on other atoms")
    return rows


def write_anchors(record: dict, path: Path) -> None:
    with atomic_path(path.with_suffix(".json")) as temporary:
        temporary.write_text(json.dumps(record, indent=1))
    reporting.write_rows([{"anchor": i, **a} for i, a in enumerate(record["anchors"])], path.with_suffix(".csv"))


def symmetric_matrix(n: int, measure, diagonal: float | None = None) -> np.ndarray:
    """``M[i, j] = M[j, i] = measure(i, j)`` for a symmetric measure; the diagonal is
    computed too (a check) unless its value is known by definition."""
    matrix = np.full((n, n), np.nan if diagonal is None else diagonal)
    for i in range(n):
        for j in range(i if diagonal is None else i + 1, n):
            matrix[i, j] = matrix[j, i] = measure(i, j)
    return matrix


def pair_measures(raw: list[np.ndarray], common: list[np.ndarray], cfg: DictConfig) -> dict:
    """Pair measures between checkpoints, in the common space and in the raw spaces.

    ``{name: (title, matrix)}``, names ending in the space; OT only in the common space
    (the raw spaces of different models are not one space).
    """
    cs = cfg.common_space
    titles = {"mutual_knn": f"mutual {cs.k}-NN overlap", "cka": "linear CKA", "procrustes": "Procrustes residual"}
    out = {}
    for space, features in (("common", common), ("raw", raw)):
        for name, matrix in alignment_matrices(features, cs.k).items():
            out[f"{name}_{space}"] = (f"{titles[name]}, {space} space", matrix)
    n_ot = min(cs.ot.max_atoms, len(common[0]))
    subset = np.sort(np.random.default_rng(cfg.seed).choice(len(common[0]), n_ot, replace=False))
    out["ot_common"] = (f"OT cost ({cs.ot.method}, {n_ot} atoms), common space", symmetric_matrix(
        len(common), lambda i, j: ot_cost(common[i][subset], common[j][subset], method=cs.ot.method,
                                          reg=cs.ot.reg, exact_max=cs.ot.exact_max), diagonal=0.0))
    return out


def atypicality_scores(common: list[np.ndarray], structure_index: np.ndarray, cfg: DictConfig) -> np.ndarray:
    """Per-atom atypicality (n_checkpoints, n_atoms), cross-fitted over structure folds.

    The structures are split into ``folds``; each fold's atoms are scored against the
    other folds' atoms (at most ``reference_atoms`` of them, seeded) as the reference manifold.
    """
    cs = cfg.common_space
    rng = np.random.default_rng(cfg.seed)
    structures, inverse = np.unique(structure_index, return_inverse=True)
    fold = rng.permutation(len(structures))[inverse] % cs.atypicality.folds
    scores = np.zeros((len(common), len(structure_index)))
    for f in range(cs.atypicality.folds):
        query, reference = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        if len(reference) > cs.atypicality.reference_atoms:
            reference = np.sort(rng.choice(reference, cs.atypicality.reference_atoms, replace=False))
        for c, features in enumerate(common):
            scores[c, query] = atypicality(features[reference], features[query], cs.k)
    return scores


def atypicality_table(sets, kind, scores, structure_index, numbers, reference: int, output_dir: Path, top: int):
    """Per-atom and per-structure tables; markdown rows of the ``top`` most atypical structures."""
    from ase import Atoms

    labels = [s.label for s in sets]
    reporting.write_rows([{"row": i, "structure_index": int(structure_index[i]), "atomic_number": int(numbers[i]),
                  **{label: float(scores[c, i]) for c, label in enumerate(labels)}} for i in range(len(numbers))],
                output_dir / "tables" / f"atypicality_atoms_{kind}.csv")
    per_structure = np.array([structure_atypicality(s, structure_index)[1] for s in scores])
    structures, counts = np.unique(structure_index, return_counts=True)
    rows = [{"structure": int(s), "formula": Atoms(numbers=numbers[structure_index == s]).get_chemical_formula(),
             "atoms": int(n), **{label: float(per_structure[c, i]) for c, label in enumerate(labels)}}
            for i, (s, n) in enumerate(zip(structures, counts))]
    reporting.write_rows(rows, output_dir / "tables" / f"atypicality_{kind}.csv")
    return sorted(rows, key=lambda row: -row[labels[reference]])[:top]


def common_space_section(sets, kind, structure_index, numbers, rows, targets, cfg, output_dir: Path):
    """Anchors, projections, alignment heatmaps, atypicality; probes on projected features.

    Returns the report lines and the probe/CPD rows on the projected features.
    """
    cs = cfg.common_space
    unknown = set(cs.reconstruction) - {"gfre", "lfre", "nonlinear"}
    if unknown:
        raise ValueError(f"common_space.reconstruction: unknown measures {sorted(unknown)}; use gfre, lfre, nonlinear")
    reference = reference_set(sets, cs.reference)
    raw = [invariant_features(kind, s.features(kind)) for s in sets]
    if cs.anchors:
        anchors, origin = load_anchor_rows(cs.anchors, structure_index, numbers), f"reused from `{cs.anchors}`"
    else:
        log.info("DIRECT anchors (%d) on %s features of %s", cs.n_anchors, kind, reference.label)
        candidates = np.arange(len(structure_index)) if rows is None else rows
        anchors = candidates[direct_anchors(raw[sets.index(reference)][candidates], cs.n_anchors)]
        origin = f"chosen by DIRECT sampling on `{reference.label}`"
    write_anchors(anchor_record(anchors, reference, kind, structure_index, numbers), output_dir / "tables" / f"anchors_{kind}")
    common_kind = f"common_{kind}"
    projected = [EmbeddingSet(s.label, s.path, s.attrs, {common_kind: anchor_project(x, anchors)}) for s, x in zip(sets, raw)]
    common = [p.features(common_kind) for p in projected]
    lines = [f"### Common latent space: `{kind}` features", "",
             f"Every checkpoint's atoms are projected onto their cosine similarities to the same {len(anchors)} anchor "
             f"atoms ({origin}; `tables/anchors_{kind}.json`, reuse with `common_space.anchors=`). In that space models "
             f"of any width can be compared: mutual {cs.k}-NN overlap and linear CKA (1 = same geometry), Procrustes "
             "residual and optimal-transport cost (0 = same). The raw-space versions need no anchors."
             + ("" if rows is None else f" Measured on the {len(rows)}-atom subset."), ""]
    log.info("Common-space alignment of %d checkpoints on %s features", len(sets), kind)
    labels = [s.label for s in sets]
    chosen = slice(None) if rows is None else rows
    images, tables = {"common": [], "raw": []}, []
    for name, (title, matrix) in pair_measures([x[chosen] for x in raw], [z[chosen] for z in common], cfg).items():
        reporting.write_matrix(matrix, labels, output_dir / "tables" / f"{name}_{kind}")
        figure = reporting.heatmap(matrix, labels, f"{title}, {kind}", output_dir / "figures" / f"{name}_{kind}.png",
                                   axis_labels=("checkpoint", "checkpoint"))
        images[name.rsplit("_", 1)[1]].append(f"![{name} {kind}](figures/{figure.name})")
        if name == "mutual_knn_common":
            tables = [f"Mutual {cfg.common_space.k}-NN overlap in the common space:", "",
                      reporting.matrix_table(matrix, labels), ""]
    lines += [" ".join(images["common"]), "", "Raw spaces (no anchors; OT needs one space):", "",
              " ".join(images["raw"]), "", *tables]
    scores = atypicality_scores(common, structure_index, cfg)
    top = atypicality_table(sets, kind, scores, structure_index, numbers, sets.index(reference), output_dir,
                            cs.atypicality.top)
    lines += [f"Most atypical structures in the common space, sorted by `{reference.label}`: the mean over a "
              f"structure's atoms of their mean {cs.k}-NN distance to the atoms of other structures (cross-fitted over "
              f"{cs.atypicality.folds} folds), z-scored by the same distances among those reference atoms; ~0 is typical. "
              f"All structures in `tables/atypicality_{kind}.csv`, every atom in `tables/atypicality_atoms_{kind}.csv`.",
              "", reporting.markdown_table(top), ""]
    if cs.reconstruction:
        lines += reconstruction_section(projected, common_kind, rows, (structure_index, numbers), cfg, output_dir,
                                        names=cs.reconstruction)
    probes, cpd = [], []
    if cs.probes and targets and cfg.probes.enabled:
        probes, cpd = probe_rows(projected, common_kind, structure_index, numbers, targets, cfg)
    return lines, probes, cpd


def probe(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compare all embedding files of ``cfg.inputs``; write tables, figures, report.md."""
    report_dir = Path(cfg.paths.output_dir) / "report"
    writer = {"general": write_report, "pretraining_bias": pretraining_bias.write_report}.get(cfg.report)
    if writer is None:
        raise ValueError(f"report must be 'general' or 'pretraining_bias', got '{cfg.report}'")
    with atomic_directory(report_dir) as work:
        sets = writer(cfg, work)
    log.info("Report written to %s", report_dir / "report.md")
    if cfg.wandb.enabled:
        reporting.log_folder_to_wandb(report_dir, cfg.wandb.project, cfg.wandb.offline, group=cfg.wandb.get("group"))
    return {}, {"report": report_dir / "report.md", "sets": sets}


def write_report(cfg: DictConfig, output_dir: Path) -> list[EmbeddingSet]:
    for folder in ("tables", "figures"):
        (output_dir / folder).mkdir()
    paths = find_embedding_files(cfg.inputs)
    sets = load_embedding_sets(paths)
    structure_index, numbers = check_same_atoms(sets)
    n_atoms = len(structure_index)
    rows = atom_subset(n_atoms, cfg.max_atoms, cfg.seed)
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
        lines += reconstruction_section(sets, kind, rows, (structure_index, numbers), cfg, output_dir)
        if cfg.common_space.enabled:
            section, probes, cpd = common_space_section(sets, kind, structure_index, numbers, rows, targets, cfg, output_dir)
            lines += section
            probe_table += probes
            cpd_table += cpd
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
        reporting.write_rows(probe_table, output_dir / "tables" / "probes.csv")
        lines += ["## Probes", "",
                  f"Structure-level features ({cfg.probes.pooling} over atoms) -> target; {cfg.probes.cv}-fold "
                  "cross-validated R2 and MAE (target units) of a linear and an MLP probe.", "",
                  reporting.markdown_table(probe_table), ""]
    if curve_table:
        reporting.write_rows(curve_table, output_dir / "tables" / "learning_curves.csv")
    if cpd_table:
        reporting.write_rows(cpd_table, output_dir / "tables" / "cpd.csv")
        lines += ["## Composition projection decomposition", "",
                  "R2 of probes on the full features, on their composition part and on the geometric "
                  "residual (composition projected out). Linear (ridge) scores are the primary metric."
                  + (" **Warning:** gradient-boosted trees (gbt) inflate residual scores even on purely "
                     "compositional targets; do not read their r2_geom as geometric information."
                     if "gbt" in cfg.cpd.probes else ""), "",
                  reporting.markdown_table(cpd_table), ""]
    if cumulant_table:
        reporting.write_rows(cumulant_table, output_dir / "tables" / "cumulants.csv")
        lines += ["## Cumulant descriptors", "",
                  "GFRE between structure descriptors built from cumulants of orders 1..k of the atomic "
                  "features: `k->k+1` measures what order k+1 adds; `K->1` ~0 checks the construction.", "",
                  reporting.markdown_table(cumulant_table), ""]
    (output_dir / "report.md").write_text("\n".join(lines))
    return sets
