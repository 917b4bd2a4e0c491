"""Report of the pretraining-bias study (``train.py -m experiment=pretraining_bias``).

The sweep holds two parents (``parent_a``, ``parent_b``) and children ``<parent>_<strategy>_seed<n>``,
each with ``job.json`` (strategy, seed, test metrics) and ``embeddings/trained.h5`` on the same
test atoms. For every child :math:`c` and reference :math:`r` (its own parent, the other parent,
the scratch model of the same parent group and seed) the distance is

.. math::

    d(c, r) = \\tfrac{1}{2}\\left[\\mathrm{GFRE}(X_c \\to X_r) + \\mathrm{GFRE}(X_r \\to X_c)\\right],

the mean of the errors of reconstructing each model's features from the other's (GUIDE
section 2): 0 for the same features up to a linear map, ~1 for unrelated ones. GFRE is
asymmetric: rich features reconstruct poor ones well but not the other way round (a
fine-tuned child reconstructs a scratch model's features better than its own parent's, yet
the scratch model reconstructs the child badly), so one direction alone does not say which
models are alike. Both directions are in the tables, and LFRE (local maps) beside them.
The report answers: is each child closer to its own parent than to the other parent and to
the scratch model (mean and spread over seeds), how the strategies rank, and how accuracy
(test error on the child's task) and closeness trade off.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mlipprobe import reporting
from mlipprobe.analysis import gfre, lfre
from mlipprobe.comparison import EmbeddingSet, atom_subset, check_same_atoms

log = logging.getLogger(__name__)

STRATEGIES = ["full", "head", "transfer_full", "transfer_head", "scratch"]
OTHER_PARENT = {"a": "b", "b": "a"}
TASK_METRICS = {  # the child's task -> (metric in job.json, label, factor to the shown unit)
    "energy": ("test/energy_per_atom_mae", "G MAE (meV/atom)", 1000.0),
    "gap": ("test/gap_mae", "gap MAE (eV)", 1.0),
}


class StudyError(ValueError):
    """A folder that is not (or not yet) a pretraining-bias sweep."""


@dataclass
class Model:
    """One finished job of the study."""

    name: str
    parent: str  # "a" | "b": the parent group (for a parent: itself)
    strategy: str  # "parent" for the parents
    seed: int
    error: float | None  # test error on its task, in the shown unit
    task: str | None
    embedding: EmbeddingSet


def load_study(folder: str | Path) -> list[Model]:
    """The finished jobs of a pretraining-bias sweep folder."""
    folder = Path(folder)
    models = []
    for path in sorted(folder.glob("**/job.json")):
        job = json.loads(path.read_text())
        if job.get("status") != "finished":
            continue
        study = (job.get("config") or {}).get("study") or {}
        embeddings = (job.get("outputs") or {}).get("embeddings")
        if not study or not embeddings:
            continue
        is_parent = "parents" in study
        metrics = job.get("metrics") or {}
        task = next((t for t, (key, _, _) in TASK_METRICS.items() if key in metrics), None)
        error = metrics[TASK_METRICS[task][0]] * TASK_METRICS[task][2] if task else None
        models.append(Model(
            name=path.parent.name, parent=str(study["parent"]),
            strategy="parent" if is_parent else str(job["strategy"]), seed=int(job["seed"]),
            error=error, task=task,
            embedding=EmbeddingSet(label=path.parent.name, path=Path(embeddings), attrs={}),
        ))
    parents = {m.parent for m in models if m.strategy == "parent"}
    if parents != {"a", "b"}:
        raise StudyError(
            f"{folder} is not a finished pretraining-bias sweep: found parents {sorted(parents)} (need a and b) "
            f"among {len(models)} finished jobs. Run `python train.py -m experiment=pretraining_bias` first."
        )
    return models


def distances(models: list[Model], kind: str, cfg: DictConfig, rows: np.ndarray | None = None) -> list[dict]:
    """One row per (child, reference): symmetric GFRE (and each direction), and symmetric
    LFRE to the parents (own and other), on the atoms ``rows`` (all when None)."""
    parents = {m.parent: m for m in models if m.strategy == "parent"}
    scratch = {(m.parent, m.seed): m for m in models if m.strategy == "scratch"}
    chosen, k = slice(None) if rows is None else rows, cfg.reconstruction.n_local_points
    table = []
    for child in (m for m in models if m.strategy != "parent"):
        references = {"own parent": parents[child.parent], "other parent": parents[OTHER_PARENT[child.parent]]}
        if child.strategy != "scratch" and (child.parent, child.seed) in scratch:
            references["scratch"] = scratch[(child.parent, child.seed)]
        x = child.embedding.features(kind)[chosen]
        for role, reference in references.items():
            y = reference.embedding.features(kind)[chosen]
            forward, reverse = gfre(x, y, random_state=cfg.seed), gfre(y, x, random_state=cfg.seed)
            row = {"features": kind, "child": child.name, "parent": child.parent, "strategy": child.strategy,
                   "seed": child.seed, "reference": role, "reference_job": reference.name,
                   "gfre": 0.5 * (forward + reverse), "gfre_child_to_reference": forward,
                   "gfre_reference_to_child": reverse}
            if cfg.reconstruction.lfre and role != "scratch":
                row["lfre"] = 0.5 * (lfre(x, y, k, random_state=cfg.seed) + lfre(y, x, k, random_state=cfg.seed))
            table.append(row)
    return table


def _mean_std(values) -> str:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(values):
        return ""
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def by_child(pairs: list[dict]) -> dict[str, dict[str, float]]:
    """``{child: {reference: symmetric GFRE}}`` from the rows of :func:`distances`."""
    table: dict[str, dict[str, float]] = {}
    for r in pairs:
        table.setdefault(r["child"], {})[r["reference"]] = r["gfre"]
    return table


def summary_rows(models: list[Model], pairs: list[dict]) -> list[dict]:
    """Per (strategy, parent): mean ± std over seeds of the distance to each reference, how
    often the child is closer to its own parent, and the test error."""
    distance = by_child(pairs)
    table = []
    for strategy in [s for s in STRATEGIES if any(m.strategy == s for m in models)]:
        for parent in ("a", "b"):
            children = [m for m in models if m.strategy == strategy and m.parent == parent and m.name in distance]
            if not children:
                continue
            d = [distance[m.name] for m in children]
            own_other = [x["own parent"] < x["other parent"] for x in d]
            own_scratch = [x["own parent"] < x["scratch"] for x in d if "scratch" in x]
            row = {
                "strategy": strategy, "parent": parent, "seeds": len(children),
                "to own parent": _mean_std(x["own parent"] for x in d),
                "to other parent": _mean_std(x["other parent"] for x in d),
                "to scratch": _mean_std(x.get("scratch") for x in d),
                "own < other": f"{sum(own_other)}/{len(own_other)}",
                "own < scratch": f"{sum(own_scratch)}/{len(own_scratch)}" if own_scratch else "",
            }
            mine = [r for r in pairs if r["strategy"] == strategy and r["parent"] == parent]
            if any("lfre" in r for r in mine):
                for role in ("own parent", "other parent"):
                    row[f"LFRE to {role}"] = _mean_std(r.get("lfre") for r in mine if r["reference"] == role)
            task = children[0].task
            row.update({"test error": _mean_std(m.error for m in children),
                        "task": TASK_METRICS[task][1] if task else ""})
            table.append(row)
    return table


def closer_to_own_parent(models: list[Model], pairs: list[dict]) -> dict[str, tuple[int, int]]:
    """Fine-tuned children (not scratch) closer to their own parent than to the other parent,
    and than to the scratch model: ``{reference: (closer, compared)}``."""
    distance = by_child(pairs)
    children = [distance[m.name] for m in models if m.strategy not in ("parent", "scratch") and m.name in distance]
    counts = {}
    for reference in ("other parent", "scratch"):
        compared = [d for d in children if reference in d]
        counts[reference] = (sum(d["own parent"] < d[reference] for d in compared), len(compared))
    return counts


def closeness_heatmap(rows: list[dict], kind: str, path: Path) -> Path:
    """Rows: child groups (parent, strategy); columns: parent a, parent b, scratch; mean over seeds."""
    groups = [(p, s) for s in STRATEGIES for p in ("a", "b") if any(r["strategy"] == s and r["parent"] == p for r in rows)]
    columns = ["parent a", "parent b", "scratch"]
    matrix = np.full((len(groups), len(columns)), np.nan)
    for i, (parent, strategy) in enumerate(groups):
        for j, column in enumerate(columns):
            values = [r["gfre"] for r in rows if r["strategy"] == strategy and r["parent"] == parent
                      and _column(r) == column]
            if values:
                matrix[i, j] = float(np.mean(values))
    labels = [_group_label(strategy, parent) for parent, strategy in groups]
    return reporting.heatmap(matrix, labels, f"symmetric GFRE(child, reference), {kind}, mean over seeds", path,
                             axis_labels=("child", "reference"), column_labels=columns)


def _group_label(strategy: str, parent: str) -> str:
    return f"scratch ({parent} group)" if strategy == "scratch" else f"{strategy} (from {parent})"


def _column(row: dict) -> str:
    if row["reference"] == "scratch":
        return "scratch"
    own = row["reference"] == "own parent"
    return f"parent {row['parent'] if own else OTHER_PARENT[row['parent']]}"


def tradeoff_figure(models: list[Model], rows: list[dict], kind: str, path: Path) -> Path:
    """Test error against the symmetric GFRE to the own parent, one panel per task, one point per job."""
    plt = reporting.pyplot()
    tasks = [t for t in TASK_METRICS if any(m.task == t and m.strategy != "parent" for m in models)]
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.2), squeeze=False)
    colours = dict(zip(STRATEGIES, plt.get_cmap("tab10").colors))
    by_child = {r["child"]: r["gfre"] for r in rows if r["reference"] == "own parent"}
    for axis, task in zip(axes[0], tasks):
        for strategy in STRATEGIES:
            for parent, marker in (("a", "o"), ("b", "s")):
                chosen = [m for m in models if m.task == task and m.strategy == strategy and m.parent == parent]
                if chosen:
                    axis.scatter([by_child[m.name] for m in chosen], [m.error for m in chosen], marker=marker,
                                 color=colours[strategy], label=_group_label(strategy, parent), alpha=0.8)
        axis.set_xlabel(f"symmetric GFRE(child, own parent), {kind}")
        axis.set_ylabel(TASK_METRICS[task][1])
        axis.set_title(f"task: {task}")
        axis.legend(fontsize=7)
    figure.tight_layout()
    return reporting.save_figure(figure, path)


def ranking(models: list[Model], pairs: list[dict]) -> list[dict]:
    """Strategies by mean distance to their own parent (over both parents and all seeds),
    with their test error relative to scratch on the same task (G) where there is one."""
    distance = by_child(pairs)
    scratch = [m for m in models if m.strategy == "scratch"]
    order = []
    for strategy in [s for s in STRATEGIES if any(m.strategy == s and m.name in distance for m in models)]:
        children = [m for m in models if m.strategy == strategy and m.name in distance]
        task = children[0].task
        row = {"strategy": strategy,
               "mean distance to own parent": round(float(np.mean([distance[m.name]["own parent"] for m in children])), 3),
               "test error": float(np.mean([m.error for m in children])),
               "task": TASK_METRICS[task][1] if task else ""}
        if scratch and task == scratch[0].task:
            row["error / scratch error"] = row["test error"] / float(np.mean([m.error for m in scratch]))
        order.append(row)
    return sorted(order, key=lambda r: r["mean distance to own parent"])


def write_report(cfg: DictConfig, output_dir: Path) -> list[EmbeddingSet]:
    """The study's report.md, tables and figures in ``output_dir``."""
    for folder in ("tables", "figures"):
        (output_dir / folder).mkdir()
    models = load_study(cfg.inputs)
    structure_index, _ = check_same_atoms([m.embedding for m in models])
    n_atoms = len(structure_index)
    rows = atom_subset(n_atoms, cfg.max_atoms, cfg.seed)
    n_children = sum(m.strategy != "parent" for m in models)
    seeds = sorted({m.seed for m in models if m.strategy != "parent"})
    lines = [
        "# Pretraining bias", "",
        f"Sweep `{cfg.inputs}`: 2 parents and {n_children} children (strategies "
        f"{', '.join(s for s in STRATEGIES if any(m.strategy == s for m in models))}; seeds {seeds}), all embedded on the "
        f"same {n_atoms} atoms of {len(np.unique(structure_index))} held-out molecules"
        + (f" (distances on a seeded subset of {cfg.max_atoms} atoms)." if rows is not None else "."), "",
        "Parents a and b were pretrained on U0 energies of disjoint thirds of the QM9 demo set, from different "
        "random weights. Children learnt G (full, head, scratch) or the HOMO-LUMO gap with a new head "
        "(transfer_full, transfer_head) on the last third. The distance between a child and a reference model "
        "is the symmetric GFRE, the mean of GFRE(child -> reference) and GFRE(reference -> child): 0 for the "
        "same features up to a linear map, ~1 for unrelated ones (one direction alone is misleading: rich "
        "features reconstruct poor ones well, not the other way round). `scratch` is the model trained from "
        "random weights with the same parent group and seed; its own row compares it with the parents as a "
        "baseline.", "",
    ]
    all_rows, headline, sections = [], [], []
    for kind in cfg.features:
        log.info("Pretraining bias: %s features", kind)
        pairs = distances(models, kind, cfg, rows)
        all_rows += pairs
        summary = summary_rows(models, pairs)
        reporting.write_rows(summary, output_dir / "tables" / f"bias_summary_{kind}.csv")
        heat = closeness_heatmap(pairs, kind, output_dir / "figures" / f"bias_gfre_{kind}.png")
        trade = tradeoff_figure(models, pairs, kind, output_dir / "figures" / f"bias_tradeoff_{kind}.png")
        counts = closer_to_own_parent(models, pairs)
        headline.append(f"- `{kind}`: fine-tuned children are closer to their own parent than to the other parent "
                        f"in **{'/'.join(map(str, counts['other parent']))}** cases, and closer to their own parent "
                        f"than to the scratch model in **{'/'.join(map(str, counts['scratch']))}**.")
        sections += [f"## `{kind}` features", "",
                  "Mean ± standard deviation over seeds of the symmetric GFRE between child and reference "
                  "(and of the symmetric LFRE, its local version, to the parents); `own < other` counts the seeds "
                  "where the child is closer to its own parent than to the other parent, `own < scratch` likewise "
                  "for the scratch model.", "",
                  reporting.markdown_table(summary), "",
                  f"![closeness {kind}](figures/{heat.name})", "",
                  "Strategies ranked by their distance to their own parent (smaller = more of the parent kept):", "",
                  reporting.markdown_table(ranking(models, pairs), ["strategy", "mean distance to own parent", "test error",
                                                              "task", "error / scratch error"]), "",
                  "Accuracy against closeness: each point is one child (test error on its task).", "",
                  f"![trade-off {kind}](figures/{trade.name})", ""]
    reporting.write_rows(all_rows, output_dir / "tables" / "bias_distances.csv")
    lines += ["## Does each child stay closer to its own parent?", "", *headline, "",
              "Every distance (GFRE each way and symmetric, LFRE) of every child: `tables/bias_distances.csv`; the jobs' "
              "metrics: `summary.csv` of the sweep.", "", *sections]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n")
    return [m.embedding for m in models]
