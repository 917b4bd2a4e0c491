"""One training step: our ``PotentialModule`` driven by a ``lightning.Trainer`` (as
``train.py`` does) vs a bare PyTorch loop doing the same work.

Per backbone config in ``BACKBONE_CONFIGS`` (``conf/backbone/<name>.yaml``, built from its
hyperparameters with ``mlipprobe.backbones.build_backbone`` on the training molecules):
both sides get a copy of the same freshly built model (strategy ``full``: every weight
trains), the same precollated batches of ``data/qm9_demo.extxyz`` (energy ``G``, as the
demo), the same loss (per-atom energy MSE; forces too with ``--forces``, needs force
labels), the same optimizer (AdamW, lr 5e-3, as ``conf/train.yaml``) and the same gradient
clipping (norm 10, ``conf/trainer/default.yaml``): forward + backward + clip + step.

The trainer runs with train.py's settings for a step (precision from the dtype,
``inference_mode=False``, ``gradient_clip_val=10``, ``log_every_n_steps=10``) but no
logger, no checkpointing, no progress bar, no model summary and no validation
(``--with-logging`` adds train.py's CSV logger and progress bar back). Our module still
updates its metrics and logs the loss on every step: that is part of what is measured.

Timing covers ``--steps`` steps after ``--warmup`` steps, in ``--rounds`` rounds; each
round times ours and bare back to back (alternating which goes first) and gives one
ratio, and the median ratio over rounds is reported, so slow drifts of a shared machine
cancel. On CPU the clock is the process CPU time (``time.process_time``; one thread, no
loader workers, so it is the work done, insensitive to other jobs taking the cores);
wall time is printed too. On CUDA the clock is wall time with synchronisation. The last
line is ``ratio: <ours / bare steps/s>`` for the worse backbone.

    python benchmarks/bench_train_step.py [--threads 1] [--steps 20] [--rounds 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from mlipprobe.data.datamodule import AtomsDataModule
from mlipprobe.strategies import Strategy
from mlipprobe.training import PotentialModule

ROOT = Path(__file__).resolve().parents[1]
BACKBONE_CONFIGS = [
    "mace_small",
    "pet_small",
]
STRATEGY = Strategy("full", ["backbone", "heads"])
LR, GRADIENT_CLIP = 5e-3, 10.0


def build(name: str, structures, dtype: str):
    cfg = OmegaConf.load(ROOT / "conf" / "backbone" / f"{name}.yaml")
    cfg.dtype = dtype
    return hydra.utils.instantiate(cfg, structures=structures)


def bare_loss(backbone, batch, forces: bool) -> torch.Tensor:
    """The loss PotentialModule trains with default weights: energy per atom (1) + forces (10)."""
    output = backbone(batch.graph, compute_forces=forces)
    n_atoms = batch.n_atoms.to(output.energy.dtype)
    loss = torch.mean((output.energy / n_atoms - batch.labels["energy"] / n_atoms) ** 2)
    if forces:
        loss = loss + 10.0 * torch.mean((output.forces - batch.labels["forces"]) ** 2)
    return loss


def clocks(device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds), after the device has finished its work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def per_step(start, end, steps: int) -> tuple[float, float]:
    return (end[0] - start[0]) / steps, (end[1] - start[1]) / steps


def time_bare(backbone, batches, warmup: int, steps: int, device, forces: bool):
    """(wall, CPU) seconds per step of a plain loop over ``batches``, and the first loss."""
    backbone.train()
    parameters = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LR, weight_decay=0.0)
    first_loss = None
    for index in range(warmup + steps):
        if index == warmup:
            start = clocks(device)
        batch = batches[index % len(batches)].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = bare_loss(backbone, batch, forces)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP)
        optimizer.step()
        if first_loss is None:
            first_loss = float(loss.detach())
    return per_step(start, clocks(device), steps), first_loss


class StepTimer(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int, device) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = self.first_loss = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = clocks(self.device)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.first_loss is None:
            self.first_loss = float(outputs["loss"])
        self.end = clocks(self.device)


def time_ours(module, batches, warmup: int, steps: int, device, dtype: str, with_logging: bool):
    """(wall, CPU) seconds per step of ``trainer.fit`` on ``batches``, and the first loss."""
    from mlipprobe.config import precision_of

    timer = StepTimer(warmup, device)
    logging = dict(
        logger=L.pytorch.loggers.CSVLogger(tempfile.mkdtemp()) if with_logging else False,
        enable_progress_bar=with_logging,
    )
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=warmup + steps,
        precision=precision_of(dtype), inference_mode=False, gradient_clip_val=GRADIENT_CLIP, log_every_n_steps=10,
        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[timer], **logging,
    )
    loader = DataLoader(batches, batch_size=None, shuffle=False, collate_fn=lambda batch: batch)
    trainer.fit(module, train_dataloaders=loader)
    return per_step(timer.start, timer.end, steps), timer.first_loss


def bench_backbone(name: str, args, device) -> float | None:
    """Print steps/s of ours and of the bare loop for one backbone config; return the ratio."""
    if not (ROOT / "conf" / "backbone" / f"{name}.yaml").is_file():
        print(f"{name}: conf/backbone/{name}.yaml not found, skipped")
        return None
    keys = {"energy": "G", "forces": "forces" if args.forces else None}
    splits = {"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "seed": 0}
    datamodule = AtomsDataModule(args.data, keys, splits, batch_size=args.batch_size, limit=args.n).load()
    structures = datamodule.split("train")
    torch.manual_seed(0)
    parent = build(name, structures, args.dtype)
    STRATEGY.prepare(parent, [])
    datamodule.attach(parent)
    batches = list(datamodule.train_dataloader())

    def run_ours():
        module = PotentialModule(
            copy.deepcopy(parent).to(device), datamodule.keys, STRATEGY,
            optimizer=functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.0),
        )
        return time_ours(module, batches, args.warmup, args.steps, device, args.dtype, args.with_logging)

    def run_bare():
        return time_bare(copy.deepcopy(parent).to(device), batches, args.warmup, args.steps, device, args.forces)

    clock = 1 if device.type == "cpu" else 0  # index into (wall, CPU)
    times, first_losses = {"ours": [], "bare": []}, {}
    for round_index in range(args.rounds):
        order = [("ours", run_ours), ("bare", run_bare)][:: 1 if round_index % 2 == 0 else -1]
        for side, run in order:
            seconds, first_loss = run()
            times[side].append(seconds)
            first_losses.setdefault(side, first_loss)
    ratios = [b[clock] / o[clock] for o, b in zip(times["ours"], times["bare"])]
    ratio = statistics.median(ratios)
    n_parameters = sum(p.numel() for p in parent.parameters())
    print(f"{name} ({parent.kind}, {n_parameters} parameters, {len(batches)} batches of {args.batch_size}):")
    print(f"  first-step loss (same weights, same batch): ours {first_losses['ours']:.7g}, bare {first_losses['bare']:.7g}")
    for side, label in (("ours", "ours (PotentialModule + Trainer)"), ("bare", "bare loop")):
        wall, cpu = (statistics.median(s[i] for s in times[side]) for i in (0, 1))
        print(f"  {label:33s} {1 / cpu:7.2f} steps/s CPU time, {1 / wall:7.2f} steps/s wall")
    print(f"  per-round ratios ({'CPU' if clock else 'wall'} time): {[round(r, 3) for r in ratios]}")
    print(f"  {name} ratio (median): {ratio:.3f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=ROOT / "data" / "qm9_demo.extxyz")
    parser.add_argument("--n", type=int, default=400, help="molecules read (80%% train)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads, same for both")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--forces", action="store_true", help="train on forces too (data with force labels)")
    parser.add_argument("--with-logging", action="store_true", help="CSV logger and progress bar on (train.py's defaults)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # one "GPU available" banner per fit
    warnings.filterwarnings("ignore", message=".*val_dataloader.*")  # validation is off on purpose
    device = torch.device(args.device)
    print(f"device: {device}, threads: {torch.get_num_threads()}, dtype: {args.dtype}, "
          f"steps: {args.warmup} warm-up + {args.steps} timed x {args.rounds} rounds, "
          f"logging: {'CSV + progress bar' if args.with_logging else 'off'}")
    ratios = {name: bench_backbone(name, args, device) for name in BACKBONE_CONFIGS}
    ratios = {name: ratio for name, ratio in ratios.items() if ratio is not None}
    worst = min(ratios, key=ratios.get)
    print(f"worst backbone: {worst}")
    print(f"ratio: {ratios[worst]:.3f}")


if __name__ == "__main__":
    main()
