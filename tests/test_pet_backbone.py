"""PET through metatrain: features, energies and files against metatrain's own code."""

from __future__ import annotations

import copy
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch

from mlipprobe.backbones import CheckpointError, HeadSpec, UntrustedCheckpointError, build_backbone, load_backbone
from mlipprobe.data.datamodule import AtomsDataModule
from tests.conftest import ROOT, TINY_PET
from tests.helpers.emt_data import make_emt_dataset
from tests.test_strategies import STRATEGIES, changed, snapshot

PARENT = ROOT / "checkpoints" / "demo_pet_parent.ckpt"  # written by `mtt train` (recipe in conf/metatrain)
ENERGY_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}


@pytest.fixture(scope="module")
def molecules():
    return ase.io.read(ROOT / "data" / "qm9_demo.extxyz", ":12")


@pytest.fixture(scope="module")
def parent():
    return load_backbone(PARENT, trusted=True, dtype="float64")


def metatrain_outputs(path, structures, names, dtype=torch.float64):
    """metatrain's own loading and evaluation of a checkpoint or exported model."""
    from metatomic.torch import ModelEvaluationOptions, ModelOutput, systems_to_torch
    from metatrain.utils.io import load_model
    from metatrain.utils.neighbor_lists import get_system_with_neighbor_lists

    model = load_model(str(path))
    if hasattr(model, "capabilities"):  # exported
        systems = [get_system_with_neighbor_lists(systems_to_torch(a, dtype=dtype), model.requested_neighbor_lists()) for a in structures]
        options = ModelEvaluationOptions(length_unit="angstrom", outputs={n: ModelOutput(sample_kind=k) for n, k in names.items()})
        out = model(systems, options, check_consistency=True)
    else:
        model = model.to(dtype).eval()
        systems = [get_system_with_neighbor_lists(systems_to_torch(a, dtype=dtype), model.requested_neighbor_lists()) for a in structures]
        out = model(systems, {n: ModelOutput(sample_kind=k) for n, k in names.items()})
    return {name: out[name].block().values.detach() for name in names}


def our_outputs(backbone, structures):
    graph = backbone.collate_graphs([backbone.atoms_to_graph(a) for a in structures])
    with torch.no_grad():
        return backbone(graph, features=["backbone", "last_layer"])


def test_features_and_energies_equal_metatrain(parent, molecules):
    reference = metatrain_outputs(PARENT, molecules, {
        "energy": "system", "feature": "atom", "mtt::aux::energy_last_layer_features": "atom"})
    ours = our_outputs(parent, molecules)
    torch.testing.assert_close(ours.features["backbone"], reference["feature"], rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.features["last_layer"], reference["mtt::aux::energy_last_layer_features"], rtol=0, atol=1e-10)
    # composition baseline and scaler included: total energies, as metatrain evaluates them
    torch.testing.assert_close(ours.energy, reference["energy"].reshape(-1), rtol=0, atol=1e-8)
    assert ours.features["backbone"].shape[0] == sum(len(a) for a in molecules)


def test_forces_and_stress_are_gradients_of_the_energy(tmp_path):
    path = make_emt_dataset(tmp_path / "emt.extxyz", n_structures=4)
    structures = AtomsDataModule(path, ENERGY_KEYS, {"fractions": {"train": 1.0}}, embed_split="all").split("all")
    torch.manual_seed(0)
    backbone = build_backbone(kind="pet", hypers=TINY_PET, structures=structures, dtype="float64")
    atoms = structures[0]
    out = backbone(backbone.collate_graphs([backbone.atoms_to_graph(atoms)]), compute_forces=True, compute_stress=True)

    def energy(a):
        with torch.no_grad():
            return float(backbone(backbone.collate_graphs([backbone.atoms_to_graph(a)])).energy)

    # the per-element baseline is the least-squares fit, it is what metatrain's composition
    # model adds, and it survives a save/load round trip
    from metatomic.torch import ModelOutput

    from mlipprobe.data.statistics import composition_matrix, energy_statistics

    stats = energy_statistics(structures, 4.0)
    expected = composition_matrix(structures, stats["atomic_numbers"]) @ np.array(stats["atomic_energies"])
    again = load_backbone(backbone.save(tmp_path / "pet.pt"), dtype="float64")
    for model in (backbone, again):
        systems = model.collate_graphs([model.atoms_to_graph(a) for a in structures]).systems
        baseline = model.model.additive_models[0](systems, {"energy": ModelOutput(sample_kind="system")})
        np.testing.assert_allclose(baseline["energy"].block().values.reshape(-1).numpy(), expected, rtol=1e-10)
    assert float(our_outputs(again, [atoms]).energy) == pytest.approx(energy(atoms), abs=1e-9)
    step = 1e-4
    moved = [atoms.copy() for _ in range(2)]
    moved[0].positions[1, 2] += step
    moved[1].positions[1, 2] -= step
    assert out.forces[1, 2].item() == pytest.approx(-(energy(moved[0]) - energy(moved[1])) / (2 * step), abs=1e-6)
    strained = [atoms.copy() for _ in range(2)]
    for sign, a in zip((1, -1), strained):
        a.set_cell(atoms.cell @ (np.eye(3) + sign * step * np.diag([1.0, 0, 0])), scale_atoms=True)
    numeric = (energy(strained[0]) - energy(strained[1])) / (2 * step) / atoms.get_volume()
    assert out.stress[0, 0, 0].item() == pytest.approx(numeric, rel=1e-4)


def test_mlipprobe_checkpoint_round_trips_without_trust(parent, molecules, tmp_path):
    backbone = copy.deepcopy(parent)
    backbone.add_head(HeadSpec("gap"))
    path = backbone.save(tmp_path / "pet.pt")
    again = load_backbone(path, dtype="float64")  # no trust step: weights + JSON only
    assert again.kind == "pet" and list(again.new_heads) == ["gap"]
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    a, b = our_outputs(backbone, molecules), our_outputs(again, molecules)
    torch.testing.assert_close(a.energy, b.energy, rtol=0, atol=0)
    torch.testing.assert_close(a.features["last_layer"], b.features["last_layer"], rtol=0, atol=0)


def test_metatrain_checkpoint_round_trip_and_export(parent, molecules, tmp_path):
    """Our .ckpt loads in metatrain, `mtt export` turns it into a model we embed with."""
    backbone = copy.deepcopy(parent)
    STRATEGIES["full"].prepare(backbone, [])
    with torch.no_grad():
        backbone.model.backend.node_embedders[0].weight.mul_(1.01)  # a "fine-tuned" model
    ckpt = backbone.export(tmp_path / "child.ckpt")
    ours = our_outputs(backbone, molecules)
    reference = metatrain_outputs(ckpt, molecules, {"energy": "system", "feature": "atom"})
    torch.testing.assert_close(ours.energy, reference["energy"].reshape(-1), rtol=0, atol=1e-8)
    exported = tmp_path / "child.pt"
    subprocess.run([sys.executable, "-m", "metatrain", "export", str(ckpt), "-o", str(exported)],
                   check=True, cwd=tmp_path, capture_output=True)
    from_export = load_backbone(exported)  # TorchScript: embedding only
    assert from_export.feature_names() == ["backbone", "last_layer"]
    embedded = from_export.embed(molecules, batch_size=5)
    float32 = {k: v.to(torch.float32).numpy() for k, v in ours.features.items()}
    np.testing.assert_allclose(embedded["backbone"], float32["backbone"], atol=1e-4)
    np.testing.assert_allclose(embedded["last_layer"], float32["last_layer"], atol=1e-4)
    with pytest.raises(CheckpointError, match="exported .*can be embedded but not trained"):
        STRATEGIES["full"].prepare(from_export, [])


def test_untrusted_metatrain_checkpoint_is_refused():
    with pytest.raises(UntrustedCheckpointError, match=r"demo_pet_parent.ckpt .*backbone.trusted=true"):
        load_backbone(PARENT)


def test_new_head_last_layer_and_inheritance(parent, molecules):
    fresh, inherited = copy.deepcopy(parent), copy.deepcopy(parent)
    fresh.add_head(HeadSpec("gap"))
    inherited.add_head(HeadSpec("gap"), init="energy")
    energy_ll = our_outputs(parent, molecules).features["last_layer"]
    # last_layer is now the new target's; inherited from energy it starts equal to the energy one
    torch.testing.assert_close(our_outputs(inherited, molecules).features["last_layer"], energy_ll, rtol=0, atol=1e-12)
    assert not torch.allclose(our_outputs(fresh, molecules).features["last_layer"], energy_ll)
    # the backbone features do not depend on the head
    torch.testing.assert_close(our_outputs(fresh, molecules).features["backbone"], our_outputs(parent, molecules).features["backbone"])
    with pytest.raises(CheckpointError, match="only a scalar head can be initialised from the energy head"):
        copy.deepcopy(parent).add_head(HeadSpec("dipole", vector=True), init="energy")


@pytest.fixture(scope="module")
def pet_parent(tmp_path_factory):
    path = make_emt_dataset(tmp_path_factory.mktemp("emt") / "emt.extxyz", n_structures=8, seed=0)
    structures = AtomsDataModule(path, ENERGY_KEYS, {"fractions": {"train": 1.0}}, embed_split="all").split("all")
    return build_backbone(kind="pet", hypers=TINY_PET, structures=structures, dtype="float64")


def test_pet_head_group_is_metatrains_heads_method(pet_parent):
    """`head` trains exactly what metatrain's `heads` fine-tuning method leaves trainable."""
    from metatrain.pet.modules.finetuning import apply_finetuning_strategy

    reference = copy.deepcopy(pet_parent.model)
    apply_finetuning_strategy(reference, {"method": "heads", "inherit_heads": {}})
    expected = {f"model.{n}" for n, p in reference.named_parameters() if p.requires_grad}
    assert {n for n, _ in pet_parent.parameter_groups()["heads"]} == expected


def test_pet_scratch_reinitializes_weights_and_keeps_composition(parent):
    backbone = copy.deepcopy(parent)  # trained by mtt: no weight sits at its initial value
    before = snapshot(backbone)
    STRATEGIES["scratch"].prepare(backbone, [], seed=1)
    after = snapshot(backbone)
    for group in ("backbone", "heads"):
        same = {n for n, p in after[group].items() if p.numel() > 1} - changed(before, after, group)
        assert not same, f"not re-initialised: {sorted(same)[:3]}"
    composition = "model.additive_models.0.energy_composition_buffer"
    assert torch.equal(dict(backbone.named_buffers())[composition], dict(parent.named_buffers())[composition])


def test_exported_model_embeds_through_the_entry_point_and_refuses_training(tmp_path):
    from mlipprobe.tasks import ConfigError, embed, train
    from tests.test_train_entry import compose_train

    exported = tmp_path / "parent.pt"
    subprocess.run([sys.executable, "-m", "metatrain", "export", str(PARENT), "-o", str(exported)],
                   check=True, cwd=tmp_path, capture_output=True)
    overrides = ["backbone=pet", f"backbone.checkpoint={exported}"]
    with pytest.raises(ConfigError, match=r"parent\.pt is an exported model: it can be embedded \(task=embed\) but not trained"):
        train(compose_train(tmp_path / "train", overrides))
    assert not list((tmp_path / "train").glob("**/*.h5")) and not list((tmp_path / "train").glob("checkpoints/*"))
    output = tmp_path / "parent.h5"
    embed(compose_train(tmp_path / "embed", [*overrides, "task=embed", f"embed.output={output}"]))
    from mlipprobe.embeddings import read_embeddings

    written = read_embeddings(output)
    structures = ase.io.read(ROOT / "data" / "qm9_demo.extxyz", ":40")
    test_rows = np.isin(written["structure_index"], [a.info.get("structure_index", i) for i, a in enumerate(structures)])
    assert written["attrs"]["backbone"] == "pet" and test_rows.all()
    reference = load_backbone(PARENT, trusted=True).embed([structures[i] for i in np.unique(written["structure_index"])])
    np.testing.assert_allclose(written["features"]["backbone"], reference["backbone"], atol=1e-4)
