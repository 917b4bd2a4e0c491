"""The pretraining-bias study: its configs, parents trained on demand, and its report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mlipprobe.data.readers import DataError
from mlipprobe.data.splits import resolve_splits, split_ranges
from tests.test_train_entry import ROOT


def compose_study(experiment, overrides=()):
    import mlipprobe.config  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        extra = ["study.dir=/study"] if experiment == "pretraining_bias" else []
        return compose("train", overrides=[f"experiment={experiment}", *extra, *overrides])


def indices(cfg, n=1000):
    return resolve_splits(n, cfg.data.splits)


def test_parents_and_children_learn_on_disjoint_data_and_share_the_test_molecules():
    parent_a = indices(compose_study("pretraining_bias_parent", ["study.parent=a"]))
    parent_b = indices(compose_study("pretraining_bias_parent", ["study.parent=b"]))
    child = indices(compose_study("pretraining_bias", ["study.parent=b", "strategy=full"]))
    learnt = [set(np.concatenate([s["train"], s["val"]]).tolist()) for s in (parent_a, parent_b, child)]
    assert all(len(s) == 300 for s in learnt)
    assert not (learnt[0] & learnt[1]) and not (learnt[0] & learnt[2]) and not (learnt[1] & learnt[2])
    np.testing.assert_array_equal(parent_a["test"], child["test"])
    np.testing.assert_array_equal(parent_b["test"], child["test"])
    assert not set(child["test"].tolist()) & set().union(*learnt)


@pytest.mark.parametrize(("strategy", "energy", "targets"), [
    ("full", "G", []), ("head", "G", []), ("scratch", "G", []),
    ("transfer_full", None, ["gap"]), ("transfer_head", None, ["gap"]),
])
def test_each_strategy_gets_its_task_and_its_parent(strategy, energy, targets):
    cfg = compose_study("pretraining_bias", ["study.parent=b", f"strategy={strategy}"])
    assert cfg.data["keys"].energy == energy and list(cfg.data["keys"].targets) == targets
    assert cfg.backbone.checkpoint == "/study/parent_b/checkpoints/model.pt"
    (requirement,) = cfg.requires
    assert requirement.dir == "/study/parent_b"
    parent = compose_study("pretraining_bias_parent", list(requirement.overrides))
    assert parent.data["keys"].energy == "U0" and parent.strategy.name == "scratch" and parent.seed == 101
    assert parent.trainer.max_epochs == cfg.study.parent_epochs


def test_split_ranges_are_checked():
    with pytest.raises(DataError, match=r"train: \[0.5, 0.2\]"):
        split_ranges(10, {"train": [0.5, 0.2]})
    with pytest.raises(DataError, match="both split"):
        resolve_splits(10, {"ranges": {"train": [0.0, 0.6], "test": [0.5, 1.0]}})


def test_the_study_runs_end_to_end_and_its_report_answers_the_questions(tmp_path):
    """Two parents trained on demand, children of both under two strategies, then the report
    (one epoch each: a check of the machinery; the README shows the full study)."""
    sweep = tmp_path / "bias"
    small = ["trainer.max_epochs=1", "study.parent_epochs=1", "logger=none", "trainer.enable_progress_bar=false"]
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "experiment=pretraining_bias",
                             "strategy=full,scratch", "seed=0", f"hydra.sweep.dir={sweep}", *small],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "a_full_seed0", "a_scratch_seed0", "b_full_seed0", "b_scratch_seed0", "parent_a", "parent_b"]
    with open(sweep / "summary.csv", newline="") as handle:
        assert {row["status"] for row in csv.DictReader(handle)} == {"finished"}
    parent_job = json.loads((sweep / "parent_a" / "job.json").read_text())
    assert parent_job["config"]["data"]["keys"]["energy"] == "U0"

    result = subprocess.run([sys.executable, str(ROOT / "probe.py"), "experiment=pretraining_bias", f"inputs={sweep}",
                             "features=[backbone]", "max_atoms=400"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = sweep / "probe" / "report"
    text = (report / "report.md").read_text()
    assert "Does each child stay closer to its own parent?" in text
    for figure in ("bias_gfre_backbone.png", "bias_tradeoff_backbone.png"):
        assert (report / "figures" / figure).stat().st_size > 10_000 and f"figures/{figure}" in text
    with open(report / "tables" / "bias_distances.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    full = {(r["parent"], r["reference"]): float(r["gfre"]) for r in rows if r["strategy"] == "full"}
    assert set(full) == {(p, ref) for p in "ab" for ref in ("own parent", "other parent", "scratch")}
    for parent in "ab":  # one epoch of fine-tuning leaves a child next to its parent
        assert full[(parent, "own parent")] < full[(parent, "other parent")]
        assert full[(parent, "own parent")] < full[(parent, "scratch")]
    assert all(r["lfre"] for r in rows if r["reference"] != "scratch")
