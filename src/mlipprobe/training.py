"""The LightningModule that trains every backbone under every strategy."""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import lightning as L
import numpy as np
import torch
import torchmetrics
from torch import nn

from mlipprobe.backbones.base import Backbone, HeadSpec
from mlipprobe.data.datamodule import Batch
from mlipprobe.data.readers import KeyMap
from mlipprobe.strategies import Strategy

DEFAULT_LOSS_WEIGHTS = {"energy": 1.0, "forces": 10.0, "stress": 1.0}


def head_specs(keys: KeyMap, structures) -> list[HeadSpec]:
    """One new head per target of ``keys``, its width taken from the data."""
    specs = []
    for target in keys.targets:
        atoms = structures[0]
        value = np.asarray(atoms.arrays[target.name] if target.per_atom else atoms.info[target.name])
        dim = int(value.shape[-1]) if value.ndim else 1
        vector = bool(getattr(target, "vector", False))
        if vector and dim != 3:
            raise ValueError(f"Target '{target.name}' is marked vector but has {dim} components")
        specs.append(HeadSpec(name=target.name, dim=dim, vector=vector))
    return specs


def pool(values: torch.Tensor, batch: Batch, how: str) -> torch.Tensor:
    """Per-atom rows (n_atoms, d) -> per-structure rows (n_structures, d) by sum or mean."""
    pooled = torch.zeros(batch.num_structures, values.shape[-1], dtype=values.dtype, device=values.device)
    pooled.index_add_(0, batch.atom_to_structure, values)
    if how == "mean":
        pooled = pooled / batch.n_atoms.unsqueeze(-1).to(values.dtype)
    return pooled


class PotentialModule(L.LightningModule):
    """Fine-tunes or trains a backbone on energies, forces, stress and new targets.

    Quantities and metric keys (``split`` is ``train``, ``val`` or ``test``):

    - ``{split}/loss``: weighted sum of mean squared errors (the monitored ``val/loss``);
    - ``{split}/energy_per_atom_{mae,rmse}``, ``{split}/forces_{mae,rmse}``,
      ``{split}/stress_{mae,rmse}``, ``{split}/{target}_{mae,rmse}`` for each target.

    Energy enters the loss per atom. Forces and stress come from autograd, so gradients are
    enabled in validation and test; the trainer must run with ``inference_mode=False``.

    Parameters
    ----------
    backbone : Backbone
        Already prepared by ``strategy.prepare`` (heads added, frozen groups set).
    keys : KeyMap
        Which labels the data has; a quantity is trained when it has a label and a
        non-zero loss weight.
    strategy : Strategy
        Supplies the optimizer parameter groups and their learning rates.
    optimizer : callable
        ``optimizer(param_groups) -> torch.optim.Optimizer`` (a Hydra ``_partial_``);
        its ``lr`` keyword is the base learning rate.
    scheduler : callable, optional
        ``scheduler(optimizer)``; monitored on ``val/loss`` when it needs a metric.
    loss_weights : mapping
        ``{quantity: weight}``; defaults energy 1, forces 10, stress 1, targets 1.
    """

    def __init__(
        self,
        backbone: Backbone,
        keys: KeyMap,
        strategy: Strategy,
        optimizer: Callable,
        scheduler: Callable | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.keys = keys
        self.strategy = strategy
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        weights = {**DEFAULT_LOSS_WEIGHTS, **{t.name: 1.0 for t in keys.targets}}
        weights.update(loss_weights or {})
        present = {"energy": keys.energy, "forces": keys.forces, "stress": keys.stress}
        present.update({t.name: t.key for t in keys.targets})
        self.loss_weights = {q: float(weights[q]) for q, key in present.items() if key and weights[q] > 0}
        self.targets = {t.name: t for t in keys.targets if t.name in self.loss_weights}
        self.metrics = nn.ModuleDict()
        for split in ("train", "val", "test"):
            for quantity in self.loss_weights:
                name = "energy_per_atom" if quantity == "energy" else quantity
                self.metrics[f"{split}__{name}__mae"] = torchmetrics.MeanAbsoluteError()
                self.metrics[f"{split}__{name}__rmse"] = torchmetrics.MeanSquaredError(squared=False)
        for metric in self.metrics.values():
            metric.set_dtype(backbone.dtype)  # accumulate in the model's precision

    # --- statistics -------------------------------------------------------------------
    def normalize_new_heads(self, structures) -> None:
        """Set each new head's output shift/scale from the training labels."""
        for name, target in self.targets.items():
            if name not in self.backbone.new_heads:
                continue
            rows = []
            for atoms in structures:
                value = np.atleast_1d(atoms.arrays[name] if target.per_atom else atoms.info[name])
                per_atom = value / len(atoms) if target.pooling == "sum" and not target.per_atom else value
                rows.append(np.atleast_2d(per_atom))
            values = np.concatenate(rows, axis=0)
            head = self.backbone.new_heads[name]
            if head.spec.vector:
                head.scale.fill_(float(np.sqrt((values**2).mean())) or 1.0)
                continue
            std = values.std(axis=0)
            head.shift.copy_(torch.as_tensor(values.mean(axis=0)))
            head.scale.copy_(torch.as_tensor(np.where(std > 0, std, 1.0)))

    # --- steps --------------------------------------------------------------------------
    def predict_quantities(self, batch: Batch) -> dict[str, torch.Tensor]:
        output = self.backbone(
            batch.graph,
            compute_forces="forces" in self.loss_weights,
            compute_stress="stress" in self.loss_weights,
        )
        predictions = {}
        if "energy" in self.loss_weights:
            predictions["energy"] = output.energy
        if "forces" in self.loss_weights:
            predictions["forces"] = output.forces
        if "stress" in self.loss_weights:
            predictions["stress"] = output.stress
        for name, target in self.targets.items():
            values = output.heads[name]
            predictions[name] = values if target.per_atom else pool(values, batch, target.pooling)
        return predictions

    def _step(self, batch: Batch, split: str) -> torch.Tensor:
        needs_grad = "forces" in self.loss_weights or "stress" in self.loss_weights
        with torch.enable_grad() if needs_grad else contextlib.nullcontext():
            predictions = self.predict_quantities(batch)
        n_atoms = batch.n_atoms.to(batch.labels[next(iter(self.loss_weights))].dtype)
        terms = {}
        for quantity, weight in self.loss_weights.items():
            predicted, label = predictions[quantity], batch.labels[quantity]
            if quantity == "energy":
                predicted, label = predicted / n_atoms, label / n_atoms
                quantity = "energy_per_atom"
            predicted = predicted.reshape(label.shape)
            terms[quantity] = weight * torch.mean((predicted - label) ** 2)
            for kind in ("mae", "rmse"):
                self.metrics[f"{split}__{quantity}__{kind}"].update(predicted.detach(), label)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise FloatingPointError(
                f"The {split} loss became {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step} ({detail}). Lower the learning rate or check the data."
            )
        self.log(f"{split}/loss", loss, on_epoch=True, on_step=split == "train",
                 prog_bar=True, batch_size=batch.num_structures, sync_dist=True)  # DDP: mean over ranks
        return loss

    def _log_epoch_metrics(self, split: str) -> None:
        """Log the split's MAE/RMSE over the epoch and reset them. Metrics are only updated
        in the steps: ``self.log(metric)`` on every step costs Lightning a device move of
        the metric per call, a few percent of a small model's training step."""
        for key, metric in self.metrics.items():
            name, quantity, kind = key.split("__")
            if name == split and metric.update_called:
                self.log(f"{split}/{quantity}_{kind}", metric.compute())
                metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        lr = float(getattr(self.optimizer_factory, "keywords", {}).get("lr", 1e-3))
        optimizer = self.optimizer_factory(self.strategy.optimizer_groups(self.backbone, lr))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"},
        }
