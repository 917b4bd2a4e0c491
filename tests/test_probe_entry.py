"""probe.py on real embedding files: report contents, checks on the inputs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mlipprobe import load_backbone
from mlipprobe.comparison import EmbeddingMismatchError
from mlipprobe.data import AtomsDataModule
from mlipprobe.embeddings import write_embeddings
from mlipprobe.probing import probe

ROOT = Path(__file__).resolve().parents[1]
PARENT = ROOT / "checkpoints" / "demo_mace_parent.pt"


@pytest.fixture(scope="module")
def embedding_folder(tmp_path_factory):
    """Two checkpoints (the demo parent and a re-initialised copy) embedded on 40 molecules."""
    folder = tmp_path_factory.mktemp("runs")
    datamodule = AtomsDataModule(
        ROOT / "data" / "qm9_demo.extxyz", {"energy": "U0"}, {"fractions": {"train": 0.5, "test": 0.5}},
        limit=80, eval_batch_size=40,
    )
    kwargs = {"accelerator": "cpu", "enable_progress_bar": False}
    features = ["backbone", "last_layer", "layer0_L1"]
    parent = load_backbone(PARENT)
    write_embeddings(parent, datamodule, folder / "parent" / "embeddings" / "parent.h5", features,
                     attributes={"role": "parent"}, trainer_kwargs=kwargs)
    scratch = load_backbone(PARENT)
    scratch.reset_parameters(seed=1)
    scratch = load_backbone(scratch.save(folder / "scratch" / "model.pt"))
    write_embeddings(scratch, datamodule, folder / "scratch" / "embeddings" / "trained.h5", features,
                     attributes={"strategy": "scratch", "role": "trained"}, trainer_kwargs=kwargs)
    return folder


def compose_probe(tmp_path, overrides=()):
    import mlipprobe.config  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("probe", overrides=[f"paths.output_dir={tmp_path}", "probes.cv=3", *overrides])


def test_report_has_matrices_heatmaps_and_tables(embedding_folder, tmp_path):
    _, objects = probe(compose_probe(tmp_path, [f"inputs={embedding_folder}", "reconstruction.max_epochs=50",
                                                "data.atom_targets=[mulliken]"]))
    labels = [s.label for s in objects["sets"]]
    assert labels == ["demo_mace_parent", "scratch"]
    for name in ("gfre", "lfre", "nonlinear"):
        for kind in ("backbone", "last_layer"):
            matrix = np.array(json.loads((tmp_path / "report" / "tables" / f"{name}_{kind}.json").read_text())["matrix"])
            assert matrix.shape == (2, 2)
            assert (tmp_path / "report" / "figures" / f"{name}_{kind}.png").stat().st_size > 1000
            if name == "gfre":
                assert np.all(np.diag(matrix) < 1e-6)
            assert np.all(np.diag(matrix) < matrix[~np.eye(2, dtype=bool)])
    report = (tmp_path / "report" / "report.md").read_text()
    for text in ("GFRE", "LFRE", "## Probes", "mulliken (per atom)", "Composition projection", "Cumulant",
                 "figures/pcovr_backbone.png", "figures/learning_curve_last_layer.png",
                 "### Common latent space: `backbone` features", "figures/mutual_knn_common_last_layer.png",
                 "figures/ot_common_backbone.png", "Most atypical structures"):
        assert text in report
    assert (tmp_path / "report" / "tables" / "probes.csv").is_file() and (tmp_path / "report" / "tables" / "cpd.csv").is_file()



def test_lfre_spread_tables_match_pointwise_errors_on_the_atom_subset(embedding_folder, tmp_path):
    from mlipprobe.analysis import lfre, pointwise_lfre, reconstruction_split

    cfg = compose_probe(tmp_path, [f"inputs={embedding_folder}", "features=[backbone]", "max_atoms=300",
                                   "reconstruction.gfre=false", "reconstruction.nonlinear=false",
                                   "probes.enabled=false", "cpd.enabled=false", "cumulants.order=1",
                                   "pcovr.target=none", "common_space.enabled=false"])
    _, objects = probe(cfg)
    parent, scratch = objects["sets"]
    structure_index, numbers = parent.atoms()
    rows = np.sort(np.random.default_rng(cfg.seed).choice(len(numbers), 300, replace=False))
    x, y = parent.features("backbone")[rows], scratch.features("backbone")[rows]
    errors = pointwise_lfre(x, y)
    tables = tmp_path / "report" / "tables"
    assert json.loads((tables / "lfre_backbone.json").read_text())["matrix"][0][1] == pytest.approx(lfre(x, y), rel=1e-12)
    median = json.loads((tables / "lfre_median_backbone.json").read_text())["matrix"]
    assert median[0][1] == pytest.approx(np.median(errors), rel=1e-12)
    assert median[0][1] != pytest.approx(lfre(x, y), rel=1e-3)
    worst = [r for r in csv.DictReader(open(tables / "lfre_worst_atoms_backbone.csv")) if r["X"] == parent.label and r["Y"] == scratch.label]
    test_rows = rows[reconstruction_split(len(rows))[1]]
    assert [float(r["lfre"]) for r in worst] == pytest.approx(np.sort(errors)[::-1][:5], rel=1e-12)
    for r in worst:
        row = int(r["row"])
        assert float(r["lfre"]) == pytest.approx(errors[np.flatnonzero(test_rows == row)[0]], rel=1e-12)
        assert (int(r["atomic_number"]), int(r["structure_index"])) == (numbers[row], structure_index[row])
    assert "median per pair" in (tmp_path / "report" / "report.md").read_text()

def test_common_space_section_saves_anchors_that_a_later_run_reuses(embedding_folder, tmp_path):
    from mlipprobe.probing import AnchorMismatchError

    quick = [f"inputs={embedding_folder}", "features=[backbone]", "reconstruction.lfre=false",
             "reconstruction.nonlinear=false", "reconstruction.max_epochs=20", "cpd.enabled=false",
             "cumulants.order=1", "pcovr.target=none", "probes.learning_curve=[]", "common_space.n_anchors=30"]
    probe(compose_probe(tmp_path / "a", [*quick, "common_space.reconstruction=[gfre,nonlinear]", "common_space.probes=true"]))
    tables = tmp_path / "a" / "report" / "tables"
    record = json.loads((tables / "anchors_backbone.json").read_text())
    rows = [a["row"] for a in record["anchors"]]
    assert record["reference"] == "demo_mace_parent" and len(set(rows)) == 30
    with h5py.File(embedding_folder / "parent" / "embeddings" / "parent.h5") as handle:
        numbers, structure_index = handle["atomic_numbers"][()], handle["structure_index"][()]
    assert [a["atomic_number"] for a in record["anchors"]] == numbers[rows].tolist()
    assert [a["structure_index"] for a in record["anchors"]] == structure_index[rows].tolist()
    matrix = lambda folder, name: np.array(json.loads((folder / f"{name}_backbone.json").read_text())["matrix"])  # noqa: E731
    off_diagonal = ~np.eye(2, dtype=bool)
    for name in ("mutual_knn_common", "mutual_knn_raw", "cka_common", "cka_raw"):  # a model aligned with itself: 1
        assert np.allclose(np.diag(matrix(tables, name)), 1.0) and np.all(matrix(tables, name)[off_diagonal] < 0.9)
    for name in ("procrustes_common", "procrustes_raw", "ot_common", "gfre_common"):  # ... and 0
        assert np.all(np.diag(matrix(tables, name)) < 1e-6) and np.all(matrix(tables, name)[off_diagonal] > 0.01)
    assert matrix(tables, "nonlinear_common").shape == (2, 2)
    with open(tables / "probes.csv") as handle:
        assert sum(row.startswith("scratch,common_backbone,gap,") for row in handle) == 1
    with open(tables / "atypicality_backbone.csv") as handle:
        assert len(handle.readlines()) == 1 + len(np.unique(structure_index))

    probe(compose_probe(tmp_path / "b", [*quick, "probes.enabled=false", f"common_space.anchors={tables / 'anchors_backbone.json'}"]))
    reused = tmp_path / "b" / "report" / "tables"
    assert json.loads((reused / "anchors_backbone.json").read_text())["anchors"] == record["anchors"]
    assert np.array_equal(matrix(reused, "mutual_knn_common"), matrix(tables, "mutual_knn_common"))
    assert "reused from" in (tmp_path / "b" / "report" / "report.md").read_text()

    record["anchors"][3]["atomic_number"] = 9
    wrong = tmp_path / "wrong_anchors.json"
    wrong.write_text(json.dumps(record))
    with pytest.raises(AnchorMismatchError, match=rf"anchor 3 \(row {rows[3]}\) is atom Z=9 of structure "
                                                  r"\d+, but row \d+ here is Z=\d+ .*chosen on other atoms"):
        probe(compose_probe(tmp_path / "c", [*quick, "probes.enabled=false", f"common_space.anchors={wrong}"]))
    assert not (tmp_path / "c" / "report").exists()


def test_unknown_common_space_measure_is_refused(embedding_folder, tmp_path):
    with pytest.raises(ValueError, match=r"common_space.reconstruction: unknown measures \['gfr'\]"):
        probe(compose_probe(tmp_path, [f"inputs={embedding_folder}", "features=[backbone]", "reconstruction.gfre=false",
                                       "reconstruction.lfre=false", "reconstruction.nonlinear=false",
                                       "common_space.reconstruction=[gfr]"]))
    assert not (tmp_path / "report").exists()


def test_reported_gfre_equals_the_closed_form_on_the_files(embedding_folder, tmp_path):
    from mlipprobe.analysis import gfre

    probe(compose_probe(tmp_path, [f"inputs={embedding_folder}", "reconstruction.lfre=false",
                                   "reconstruction.nonlinear=false", "probes.enabled=false", "cpd.enabled=false",
                                   "cumulants.order=1", "features=[backbone]", "pcovr.target=none",
                                   "common_space.enabled=false"]))
    matrix = json.loads((tmp_path / "report" / "tables" / "gfre_backbone.json").read_text())["matrix"]
    with h5py.File(embedding_folder / "parent" / "embeddings" / "parent.h5") as a, \
            h5py.File(embedding_folder / "scratch" / "embeddings" / "trained.h5") as b:
        x, y = a["features/backbone"][()].astype(float), b["features/backbone"][()].astype(float)
    assert matrix[0][1] == pytest.approx(gfre(x, y), rel=1e-12)



def test_pair_values_measures_identical_features_once():
    from mlipprobe.comparison import EmbeddingSet, pair_values

    rng = np.random.default_rng(0)
    parent, child = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    sets = [EmbeddingSet(label, Path(f"{label}.h5"), {}, {"backbone": x})
            for label, x in (("parent", parent), ("child", child), ("head", parent.copy()))]
    calls = []

    def measure(x, y):
        calls.append((x, y))
        return float(np.abs(x - y).sum())

    values = pair_values(sets, "backbone", measure, rows=np.arange(15))
    assert len(calls) == 4  # parent and head share their features
    expected = [[float(np.abs(a.features("backbone")[:15] - b.features("backbone")[:15]).sum()) for b in sets]
                for a in sets]
    assert values == expected

def test_files_describing_other_atoms_are_refused(embedding_folder, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(embedding_folder / "parent" / "embeddings" / "parent.h5") as source, h5py.File(other, "w") as copy:
        for name in ("features/backbone", "features/last_layer", "atomic_numbers", "structure_index"):
            copy[name] = source[name][()]
        copy["atomic_numbers"][3] = 9
        copy.attrs["checkpoint_sha256"] = "other"
    inputs = f"inputs=[{embedding_folder / 'parent' / 'embeddings' / 'parent.h5'},{other}]"
    with pytest.raises(EmbeddingMismatchError, match=r"differ in atomic_numbers at row 3"):
        probe(compose_probe(tmp_path / "out", [inputs]))


def test_cli_without_inputs_exits_non_zero_with_a_message(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "probe.py"), f"inputs={tmp_path / 'nothing_here'}/*.h5", f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "No embedding file matches" in result.stderr + result.stdout
    assert not (tmp_path / "out" / "report").exists()


def test_report_is_logged_to_wandb_offline(embedding_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    probe(compose_probe(tmp_path, [f"inputs={embedding_folder}", "wandb.enabled=true", "wandb.group=my_sweep",
                                   "features=[backbone]", "reconstruction.lfre=false", "reconstruction.nonlinear=false",
                                   "probes.enabled=false", "cpd.enabled=false", "cumulants.order=1",
                                   "common_space.enabled=false"]))
    runs = list((tmp_path / "report" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    from tests.helpers.sweep_helpers import wandb_records

    records = wandb_records(next(runs[0].glob("run-*.wandb")))
    assert next(r.run for r in records if r.WhichOneof("record_type") == "run").run_group == "my_sweep"
    logged = {item.key or "/".join(item.nested_key) for r in records if r.WhichOneof("record_type") == "history"
              for item in r.history.item}
    for name in ("tables/gfre_backbone", "figures/gfre_backbone"):  # media are logged as nested items
        assert any(key.startswith(name) for key in logged), (name, sorted(logged))


def test_vector_target_is_routed_to_l1_features(embedding_folder, tmp_path):
    import ase.io

    molecules = ase.io.read(ROOT / "data" / "qm9_demo.extxyz", ":80")
    for atoms in molecules:  # a real equivariant target: the Mulliken-charge dipole
        atoms.info["charge_dipole"] = atoms.arrays["mulliken"] @ (atoms.positions - atoms.get_center_of_mass())
    data = tmp_path / "with_dipole.extxyz"
    ase.io.write(data, molecules)
    probe(compose_probe(tmp_path, [f"inputs={embedding_folder}", f"data.path={data}", "data.targets=[]",
                                   "data.vector_targets=[charge_dipole]", "features=[layer0_L1]",
                                   "reconstruction.lfre=false", "reconstruction.nonlinear=false",
                                   "cpd.enabled=false", "cumulants.order=1", "probes.learning_curve=[]",
                                   "common_space.enabled=false"]))
    report = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in report.splitlines() if "charge_dipole (vector, equivariant)" in line]
    assert len(rows) == 2
    parent_r2 = float(rows[0].split("|")[4])
    assert parent_r2 > 0.3


def test_cli_help_lists_the_probe_experiments_and_not_train_groups():
    result = subprocess.run([sys.executable, str(ROOT / "probe.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    groups = result.stdout.split("== Config groups ==")[1].split("== Config ==")[0]
    for experiment in (ROOT / "conf" / "probe_experiment").glob("*.yaml"):
        assert experiment.stem in groups
    assert "strategy" not in groups and "backbone" not in groups
    assert "inputs:" in result.stdout
