"""Differentiable probes and reconstruction heads as Lightning modules."""

from __future__ import annotations

from typing import Sequence

import lightning as L
import torch
import torchmetrics
from torch import nn


def make_network(in_dim: int, out_dim: int, hidden: Sequence[int] | None, bias: bool) -> nn.Module:
    """A linear map (``hidden`` None or empty) or an MLP with SiLU activations."""
    if not hidden:
        return nn.Linear(in_dim, out_dim, bias=bias)
    layers, width = [], in_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.SiLU()]
        width = size
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class ReconstructionModule(L.LightningModule):
    r"""Reconstruct features Y from features X with a linear or MLP head.

    .. math::  \mathrm{error} = \sqrt{\frac{1}{n_\mathrm{test}} \sum_i
               \lVert \mathbf{y}_i - f(\mathbf{x}_i) \rVert^2}

    With a linear ``f`` (no bias: X and Y are centred by the scaler) and scaled X, Y this is
    the GFRE of Goscinski et al. (2021), reached by gradient descent instead of a ridge
    solve; with an MLP it is a nonlinear reconstruction error. Logged keys:
    ``train/loss``, ``val/loss`` (mean squared norm), ``test/error``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] | None = None,
                 lr: float = 1e-2, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.network = make_network(in_dim, out_dim, hidden, bias=bool(hidden))
        self.lr, self.weight_decay = lr, weight_decay
        self._test_sum = self._test_count = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def _squared_norms(self, batch) -> torch.Tensor:
        x, y = batch
        return ((self(x) - y) ** 2).sum(-1)

    def training_step(self, batch, batch_idx):
        loss = self._squared_norms(batch).mean()
        self.log("train/loss", loss, on_epoch=True, on_step=False, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._squared_norms(batch).mean(), batch_size=len(batch[0]), prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._test_sum, self._test_count = 0.0, 0

    def test_step(self, batch, batch_idx):
        norms = self._squared_norms(batch)
        self._test_sum += float(norms.sum())
        self._test_count += len(norms)

    def on_test_epoch_end(self) -> None:
        self.log("test/error", (self._test_sum / self._test_count) ** 0.5)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class ProbeModule(L.LightningModule):
    """A linear or MLP probe of a (standardised) target from features.

    Metric keys: ``{split}/loss`` (MSE), ``{split}/r2``, ``{split}/mae``, ``{split}/rmse``
    (the last two in standardised units; ``probe_scores`` converts them back).
    """

    def __init__(self, in_dim: int, out_dim: int = 1, hidden: Sequence[int] | None = None,
                 lr: float = 1e-2, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.network = make_network(in_dim, out_dim, hidden, bias=True)
        self.lr, self.weight_decay = lr, weight_decay
        self.metrics = nn.ModuleDict({
            f"{split}_{name}": metric()
            for split in ("val", "test")
            for name, metric in (("r2", torchmetrics.R2Score), ("mae", torchmetrics.MeanAbsoluteError),
                                 ("rmse", lambda: torchmetrics.MeanSquaredError(squared=False)))
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self(x) - y) ** 2).mean()
        self.log("train/loss", loss, on_epoch=True, on_step=False, batch_size=len(x))
        return loss

    def _evaluate(self, batch, split: str) -> None:
        x, y = batch
        prediction = self(x)
        self.log(f"{split}/loss", ((prediction - y) ** 2).mean(), batch_size=len(x))
        for name in ("r2", "mae", "rmse"):
            metric = self.metrics[f"{split}_{name}"]
            metric(prediction.squeeze(-1), y.squeeze(-1))
            self.log(f"{split}/{name}", metric, batch_size=len(x))

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def LinearProbe(in_dim: int, out_dim: int = 1, **kwargs) -> ProbeModule:  # noqa: N802
    return ProbeModule(in_dim, out_dim, hidden=None, **kwargs)


def MLPProbe(in_dim: int, out_dim: int = 1, hidden: Sequence[int] = (64,), **kwargs) -> ProbeModule:  # noqa: N802
    return ProbeModule(in_dim, out_dim, hidden=hidden, **kwargs)
