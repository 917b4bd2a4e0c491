"""DDP on CPU (two processes, gloo): embeddings written once per structure, in dataset order,
and train.py under trainer=ddp, inside a Hydra multirun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from mlipprobe import load_backbone
from mlipprobe.backbones import build_backbone
from mlipprobe.data import AtomsDataModule
from mlipprobe.embeddings import merged_rows, write_embeddings

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "qm9_demo.extxyz"
TEST_ORDER = [12, 3, 7, 0, 9]  # an odd number of structures, not in file order


class PaddedPredictDataModule(AtomsDataModule):
    """Predicts through torch's DistributedSampler, which pads the last rank with structures
    that another rank embeds too (Lightning's own predict sampler does not pad)."""

    def predict_dataloader(self):
        loader = super().predict_dataloader()
        if not torch.distributed.is_initialized():
            return loader
        sampler = DistributedSampler(loader.dataset, shuffle=False)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn)


def test_merged_rows_keep_each_structure_once_in_dataset_order():
    # per-atom structure index of two ranks' parts; structure 5 (2 atoms) is in both
    rank0 = np.array([5, 5, 2, 2, 2])
    rank1 = np.array([9, 5, 5])
    rows = merged_rows([rank0, rank1], structure_order=[9, 5, 2])
    np.testing.assert_array_equal(rows, [5, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(merged_rows([rank0, rank1]), [2, 3, 4, 0, 1, 5])
    with pytest.raises(RuntimeError, match=r"missing \[4\], unexpected \[\]"):
        merged_rows([rank0, rank1], structure_order=[9, 5, 2, 4])


def test_torch_distributed_sampler_pads_with_repeats():
    """What PaddedPredictDataModule relies on: with 5 structures and 2 ranks, rank 1 gets structure 0 again."""
    assert list(DistributedSampler(range(5), num_replicas=2, rank=1, shuffle=False)) == [1, 3, 0]


@pytest.fixture(scope="module")
def five_structures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("splits")
    (folder / "train.txt").write_text("1 2 4 5 6 8 10 11")
    (folder / "test.txt").write_text(" ".join(map(str, TEST_ORDER)))
    return {"path": str(DEMO), "keys": {"energy": "U0"}, "eval_batch_size": 2, "embed_split": "test", "limit": 13,
            "splits": {"train": str(folder / "train.txt"), "test": str(folder / "test.txt")}}


@pytest.mark.parametrize("datamodule_class", [AtomsDataModule, PaddedPredictDataModule])
def test_ddp_spawn_embeddings_equal_the_single_process_file(tmp_path, five_structures, datamodule_class):
    backbone = build_backbone(checkpoint=str(ROOT / "checkpoints" / "demo_mace_parent.pt"), dtype="float64")
    datamodule = datamodule_class(**five_structures).load()
    common = {"accelerator": "cpu", "inference_mode": False, "enable_progress_bar": False}
    write_embeddings(backbone, datamodule, tmp_path / "one.h5", trainer_kwargs={**common, "devices": 1})
    write_embeddings(
        backbone, datamodule, tmp_path / "ddp.h5",
        trainer_kwargs={**common, "devices": 2, "strategy": "ddp_spawn",
                        "use_distributed_sampler": datamodule_class is AtomsDataModule},
    )
    with h5py.File(tmp_path / "one.h5") as one, h5py.File(tmp_path / "ddp.h5") as ddp:
        starts = np.flatnonzero(np.diff(ddp["structure_index"][()], prepend=-1))
        assert ddp["structure_index"][()][starts].tolist() == TEST_ORDER
        assert set(ddp) == set(one) and set(ddp["features"]) == set(one["features"]) == {"backbone", "last_layer"}
        for name in ("atomic_numbers", "structure_index"):
            np.testing.assert_array_equal(ddp[name][()], one[name][()])
        for kind in one["features"]:
            assert ddp[f"features/{kind}"].dtype == np.float64
            np.testing.assert_allclose(ddp[f"features/{kind}"][()], one[f"features/{kind}"][()], rtol=0, atol=1e-12)
        assert {k: str(v) for k, v in ddp.attrs.items()} == {k: str(v) for k, v in one.attrs.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.h5", "one.h5"]  # no parts left behind


def test_train_py_multirun_with_ddp_writes_every_job_once(tmp_path):
    """`train.py -m ... trainer=ddp`: rank 1 of each job runs that job in its folder (with
    Lightning's own relaunch it would start a sweep of its own, in a folder of another time),
    rank 0 writes the files, and the next job launches its own rank 1."""
    overrides = ["-m", "seed=0,1", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.limit=40",
                 "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false",
                 f"hydra.sweep.dir={tmp_path}/sweep_${{now:%H-%M-%S-%f}}"]
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("sweep_")] == []  # no outputs/, multirun/
    (sweep,) = tmp_path.glob("sweep_*")
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert sorted(OmegaConf.load(job / ".hydra" / "config.yaml").seed for job in jobs) == [0, 1]
    datamodule = AtomsDataModule(path=str(DEMO), keys={"energy": "G"}, limit=40,
                                 splits={"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "seed": 0})
    test_split = datamodule.split("test")
    expected_index = np.concatenate([[a.info["structure_index"]] * len(a) for a in test_split])
    for job in jobs:
        assert (job / "train_ddp_process_1.log").is_file()  # rank 1 ran in this job's folder
        assert np.isfinite(json.loads((job / "metrics.json").read_text())["test/energy_per_atom_mae"])
        for name in ("parent", "trained"):
            with h5py.File(job / "embeddings" / f"{name}.h5") as handle:
                np.testing.assert_array_equal(handle["structure_index"][()], expected_index)
                assert handle["features/backbone"].shape[0] == len(expected_index)
        trained = load_backbone(job / "checkpoints" / "model.pt")
        with h5py.File(job / "embeddings" / "trained.h5") as handle:
            np.testing.assert_allclose(handle["features/backbone"][()], trained.embed(test_split)["backbone"], atol=1e-5)
        assert not list(job.glob("**/*.partial"))
