"""The MACE backbone against mace-torch's own reference code paths."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mlipprobe.backbones import (
    CheckpointError,
    HeadSpec,
    UntrustedCheckpointError,
    build_backbone,
    load_backbone,
)
from tests.conftest import TINY_MACE, mace_calculator


def test_backbone_features_equal_mace_get_descriptors(tiny_mace, tiny_mace_files, molecules):
    calculator = mace_calculator(tiny_mace_files[1])
    reference = np.concatenate([calculator.get_descriptors(a, invariants_only=True) for a in molecules])
    ours = tiny_mace.embed(molecules, batch_size=3)["backbone"]
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10)


def test_backbone_features_equal_get_descriptors_on_periodic_cells(periodic_cells):
    backbone = build_backbone(hypers=TINY_MACE, structures=periodic_cells, dtype="float64")
    path = backbone.export(__import__("tempfile").mkdtemp() + "/cu.model")
    calculator = mace_calculator(path)
    reference = np.concatenate([calculator.get_descriptors(a) for a in periodic_cells])
    np.testing.assert_allclose(backbone.embed(periodic_cells)["backbone"], reference, atol=1e-10)


def test_last_layer_is_the_hidden_activation_of_the_last_readout(tiny_mace, molecules):
    captured = []
    readout = tiny_mace.model.readouts[-1]
    handle = readout.non_linearity.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        graph = tiny_mace.collate_graphs([tiny_mace.atoms_to_graph(a) for a in molecules])
        features = tiny_mace(graph, features=["last_layer", "backbone"]).features
    finally:
        handle.remove()
    hidden = captured[0]
    width = hidden.shape[1]
    assert torch.equal(features["last_layer"][:, -width:], hidden)
    # the linear readout of layer 0 reads that layer's invariant channels
    n_scalars = tiny_mace.layer_irreps[0].count("0e")
    assert torch.equal(features["last_layer"][:, :n_scalars], features["backbone"][:, :n_scalars])


def test_irrep_slices_rotate_as_their_order(tiny_mace, molecules):
    atoms = molecules[0]
    rotated = atoms.copy()
    rotated.rotate(63, (0.3, 1.0, -0.5), center="COM")
    names = ["backbone", "last_layer", "layer0_L1"]
    a, b = tiny_mace.embed([atoms], features=names), tiny_mace.embed([rotated], features=names)
    np.testing.assert_allclose(a["backbone"], b["backbone"], atol=1e-8)
    np.testing.assert_allclose(a["last_layer"], b["last_layer"], atol=1e-8)
    norms = lambda x: np.linalg.norm(x.reshape(len(x), -1, 3), axis=-1)  # noqa: E731
    np.testing.assert_allclose(norms(a["layer0_L1"]), norms(b["layer0_L1"]), atol=1e-8)
    assert not np.allclose(a["layer0_L1"], b["layer0_L1"], atol=1e-4)


def test_saved_checkpoint_round_trips_without_trust(tiny_mace, tiny_mace_files, molecules):
    loaded = load_backbone(tiny_mace_files[0], dtype="float64")
    assert loaded.source_sha256 and loaded.hypers == tiny_mace.hypers
    for name, value in tiny_mace.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    np.testing.assert_array_equal(
        loaded.embed(molecules)["last_layer"], tiny_mace.embed(molecules)["last_layer"]
    )


def test_exported_model_gives_the_same_energies_in_mace_calculator(tiny_mace, tiny_mace_files, molecules):
    calculator = mace_calculator(tiny_mace_files[1])
    graph = tiny_mace.collate_graphs([tiny_mace.atoms_to_graph(a) for a in molecules])
    output = tiny_mace(graph, compute_forces=True)
    energies = []
    for atoms in molecules:
        atoms = atoms.copy()
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
    np.testing.assert_allclose(output.energy.detach().numpy(), energies, rtol=1e-10)
    forces = molecules[0].copy()
    forces.calc = calculator
    n = len(molecules[0])
    np.testing.assert_allclose(output.forces[:n].detach().numpy(), forces.get_forces(), atol=1e-8)


def test_untrusted_mace_model_is_refused_and_trusted_one_loads(tiny_mace, tiny_mace_files, molecules):
    with pytest.raises(UntrustedCheckpointError, match="trusted=true") as error:
        load_backbone(tiny_mace_files[1])
    assert str(tiny_mace_files[1]) in str(error.value)
    trusted = load_backbone(tiny_mace_files[1], trusted=True, dtype="float64")
    np.testing.assert_array_equal(trusted.embed(molecules)["backbone"], tiny_mace.embed(molecules)["backbone"])


def test_importing_mace_leaves_weights_only_loading_on():
    code = (
        "import os; from mlipprobe.backbones.mace import import_mace; import_mace(); "
        "print(os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "None"


def test_element_missing_from_checkpoint_is_named(tiny_mace, periodic_cells):
    with pytest.raises(CheckpointError, match=r"Element\(s\) Cu .*its elements: H, C, N, O"):
        tiny_mace.embed(periodic_cells)


def test_unreadable_and_unknown_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.model"):
        load_backbone(garbage)
    unknown = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, unknown)
    with pytest.raises(CheckpointError, match="not a checkpoint mlipprobe knows"):
        load_backbone(unknown)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone(tmp_path / "missing.model")


def test_multi_head_model_needs_a_head_choice(molecules, tmp_path):
    hypers = dict(TINY_MACE, heads=["pt_head", "qm9"])
    hypers.update(atomic_energies=[[0.0] * 4, [1.0] * 4], atomic_numbers=[1, 6, 7, 8], avg_num_neighbors=3.0,
                  atomic_inter_scale=[1.0, 1.0], atomic_inter_shift=[0.0, 0.0])
    model = build_backbone(hypers=hypers, dtype="float64", head="qm9").model
    from mlipprobe.backbones.mace import MaceBackbone

    with pytest.raises(CheckpointError, match=r"several heads \['pt_head', 'qm9'\]"):
        MaceBackbone(model)
    first, second = MaceBackbone(model, head="pt_head"), MaceBackbone(model, head="qm9")
    a, b = first.embed(molecules[:2]), second.embed(molecules[:2])
    np.testing.assert_array_equal(a["backbone"], b["backbone"])
    assert a["last_layer"].shape == b["last_layer"].shape
    assert not np.allclose(a["last_layer"], b["last_layer"])


def test_new_head_is_fresh_and_leaves_the_model_untouched(tiny_mace_files, molecules):
    before = load_backbone(tiny_mace_files[0], dtype="float64")
    reference = {k: v.clone() for k, v in before.model.state_dict().items()}
    torch.manual_seed(1)
    before.add_head(HeadSpec("gap"))
    other = load_backbone(tiny_mace_files[0], dtype="float64")
    torch.manual_seed(2)
    other.add_head(HeadSpec("gap"))
    for name, value in before.model.state_dict().items():
        assert torch.equal(value, reference[name])
    ours = dict(before.new_heads["gap"].named_parameters())
    theirs = dict(other.new_heads["gap"].named_parameters())
    assert all(not torch.equal(ours[n], theirs[n]) for n in ours)
    graph = before.collate_graphs([before.atoms_to_graph(a) for a in molecules])
    out = before(graph)
    assert out.heads["gap"].shape == (graph.num_nodes, 1)
    with pytest.raises(CheckpointError, match="already has a head named 'gap'"):
        before.add_head(HeadSpec("gap"))


def test_vector_head_is_equivariant(tiny_mace_files, molecules):
    backbone = load_backbone(tiny_mace_files[0], dtype="float64")
    backbone.add_head(HeadSpec("dipole", dim=3, vector=True))
    atoms = molecules[0]
    rotation = torch.tensor(__import__("scipy").spatial.transform.Rotation.from_euler("xyz", [0.3, 1.1, -0.4]).as_matrix())
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.numpy().T
    out = lambda a: backbone(backbone.collate_graphs([backbone.atoms_to_graph(a)])).heads["dipole"]  # noqa: E731
    torch.testing.assert_close(out(atoms) @ rotation.T, out(rotated), atol=1e-8, rtol=0)
