"""Fit probes and reconstruction heads with Lightning and return their scores."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from typing import Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from sklearn.model_selection import KFold
from torch.utils.data import DataLoader, TensorDataset

from mlipprobe.analysis.cumulants import structure_cumulants
from mlipprobe.analysis.reconstruction import _prepare_data
from mlipprobe.probes.modules import ProbeModule, ReconstructionModule

log = logging.getLogger(__name__)


def pool_features(features, structure_index, pooling: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    r"""Per-atom rows (n_atoms, d) -> per-structure rows, sorted by structure index.

    ``mean`` (intensive), ``sum`` (extensive) or ``cumulant<K>``: the concatenated
    cumulants of orders 1..K (:func:`mlipprobe.analysis.structure_cumulants`).
    Returns ``(rows (n_structures, d'), structures (n_structures,))``.
    """
    features = np.asarray(features, dtype=np.float64)
    structure_index = np.asarray(structure_index)
    if len(features) != len(structure_index):
        raise ValueError(f"features {features.shape} and structure_index {structure_index.shape} differ in rows")
    match = re.fullmatch(r"cumulant(\d+)", pooling)
    if match:
        return structure_cumulants(features, structure_index, int(match.group(1)), return_structures=True)
    if pooling not in ("mean", "sum"):
        raise ValueError(f"pooling must be 'mean', 'sum' or 'cumulant<K>', got '{pooling}'")
    structures, inverse = np.unique(structure_index, return_inverse=True)
    rows = np.zeros((len(structures), features.shape[1]))
    np.add.at(rows, inverse, features)
    if pooling == "mean":
        rows /= np.bincount(inverse)[:, None]
    return rows, structures


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def _trainer(max_epochs: int, accelerator: str, patience: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs, accelerator=accelerator, devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[EarlyStopping("val/loss", patience=patience, mode="min")],
        check_val_every_n_epoch=1, num_sanity_val_steps=0,
    )


@contextlib.contextmanager
def _quiet_lightning():
    """Many small fits: keep Lightning's per-trainer banners out of the log."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fit(module, x_train, y_train, x_val, y_val, x_test, y_test, max_epochs, batch_size, accelerator, patience):
    with warnings.catch_warnings(), _quiet_lightning():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer = _trainer(max_epochs, accelerator, patience)
        trainer.fit(module, _loader(x_train, y_train, batch_size, True), _loader(x_val, y_val, len(x_val), False))
        return trainer.test(module, _loader(x_test, y_test, 4096, False), verbose=False)[0]


def _carve_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(2, int(round(fraction * n)))  # R2 needs two samples
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def reconstruction_error(
    X, Y, hidden: Sequence[int] | None = None, *, train_idx=None, test_idx=None, scaler: bool = True,
    val_fraction: float = 0.1, max_epochs: int = 500, batch_size: int = 256, lr: float = 1e-2,
    patience: int = 20, seed: int = 0, accelerator: str = "cpu",
) -> float:
    r"""Error of reconstructing Y from X with a trained head (linear: GFRE by SGD).

    Same split and scaling as :func:`mlipprobe.analysis.gfre` (scikit-matter's defaults
    without split arguments); a ``val_fraction`` of the training rows is held out for
    early stopping. Returns :math:`\sqrt{\mathrm{mean}_i \lVert y_i - f(x_i)\rVert^2}` on
    the test rows.
    """
    X_train, X_test, Y_train, Y_test = _prepare_data(X, Y, train_idx, test_idx, scaler, 0x5F3759DF, "cpu", torch.float32)
    fit_rows, val_rows = _carve_validation(len(X_train), val_fraction, seed)
    L.seed_everything(seed, verbose=False)
    module = ReconstructionModule(X_train.shape[1], Y_train.shape[1], hidden, lr=lr)
    result = _fit(module, X_train[fit_rows], Y_train[fit_rows], X_train[val_rows], Y_train[val_rows],
                  X_test, Y_test, max_epochs, batch_size, accelerator, patience)
    return float(result["test/error"])


def _scaler(train: np.ndarray):
    """Standardisation fitted on ``train``: (function applying it, column stds)."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return (lambda a: torch.as_tensor((a - mean) / std, dtype=torch.float32)), std


def _probe_once(X_train, y_train, X_test, y_test, hidden, seed, max_epochs, accelerator) -> dict:
    fit_rows, val_rows = _carve_validation(len(X_train), 0.15, seed)
    y_train, y_test = y_train[:, None], y_test[:, None]
    scale_x, _ = _scaler(X_train[fit_rows])
    scale_y, y_std = _scaler(y_train[fit_rows])
    L.seed_everything(seed, verbose=False)
    module = ProbeModule(X_train.shape[1], 1, hidden)
    result = _fit(
        module, scale_x(X_train[fit_rows]), scale_y(y_train[fit_rows]), scale_x(X_train[val_rows]),
        scale_y(y_train[val_rows]), scale_x(X_test), scale_y(y_test), max_epochs, 256, accelerator, patience=20,
    )
    unit = float(y_std[0])
    return {"r2": float(result["test/r2"]), "mae": float(result["test/mae"]) * unit, "rmse": float(result["test/rmse"]) * unit}


def _check_rows(X, y) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    if len(X) != len(y):
        raise ValueError(f"X has shape {X.shape} but y has shape {y.shape}: one target per row is needed")
    return X, y


def probe_scores(
    X, y, hidden: Sequence[int] | None = None, *, n_splits: int = 5, seed: int = 0,
    max_epochs: int = 300, accelerator: str = "cpu",
) -> dict[str, float]:
    """k-fold cross-validated R2, MAE and RMSE (target units) of a linear/MLP probe.

    Features and target are standardised on the training folds only. Returns
    ``{r2_mean, r2_std, mae_mean, mae_std, rmse_mean, rmse_std}``.
    """
    X, y = _check_rows(X, y)
    folds = KFold(n_splits, shuffle=True, random_state=seed).split(X)
    scores = [_probe_once(X[a], y[a], X[b], y[b], hidden, seed, max_epochs, accelerator) for a, b in folds]
    out = {}
    for name in ("r2", "mae", "rmse"):
        values = np.array([s[name] for s in scores])
        out[f"{name}_mean"], out[f"{name}_std"] = float(values.mean()), float(values.std())
    return out


def learning_curve(
    X, y, train_sizes: Sequence[float] = (0.1, 0.25, 0.5, 1.0), hidden: Sequence[int] | None = None, *,
    test_fraction: float = 0.2, seed: int = 0, max_epochs: int = 300, accelerator: str = "cpu",
) -> list[dict]:
    """Test R2/MAE against the number of training rows, on one fixed held-out split."""
    X, y = _check_rows(X, y)
    train, test = _carve_validation(len(X), test_fraction, seed)
    train = np.random.default_rng(seed).permutation(train)
    curve = []
    for size in train_sizes:
        rows = train[: max(8, int(round(size * len(train))))]
        scores = _probe_once(X[rows], y[rows], X[test], y[test], hidden, seed, max_epochs, accelerator)
        curve.append({"n_train": len(rows), **scores})
    return curve


def vector_probe_scores(vectors, structure_index, Y, *, n_splits: int = 5, seed: int = 0) -> dict[str, float]:
    r"""Equivariant linear probe of a per-structure vector target from L=1 features.

    .. math::  \hat{\mathbf{y}}_s = \sum_c w_c \sum_{i \in s} \mathbf{v}_{ic}

    One weight per channel, shared by the three components and without intercept, so the
    prediction rotates with the structure. Ridge (``RidgeCV``) on the component rows, with
    k-fold cross-validation over structures. ``vectors``: (n_atoms, mul * 3) in e3nn
    layout (a ``layer{i}_L1`` slice); ``Y``: (n_structures, 3), rows in sorted structure
    order. Returns the mean/std of R2 (over all components) and of the component MAE.
    """
    from sklearn.linear_model import RidgeCV

    vectors = np.asarray(vectors, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[1] % 3:
        raise ValueError(f"L=1 features must have shape (n_atoms, mul * 3), got {vectors.shape}")
    summed, _ = pool_features(vectors, structure_index, "sum")
    channels = summed.reshape(len(summed), -1, 3)  # (n_structures, mul, 3)
    if Y.shape != (len(channels), 3):
        raise ValueError(f"Vector target has shape {Y.shape}, expected ({len(channels)}, 3)")
    r2, mae = [], []
    for train, test in KFold(n_splits, shuffle=True, random_state=seed).split(channels):
        rows = lambda s: channels[s].transpose(0, 2, 1).reshape(-1, channels.shape[1])  # noqa: E731
        model = RidgeCV(alphas=np.logspace(-6, 3, 19), fit_intercept=False).fit(rows(train), Y[train].reshape(-1))
        predicted = model.predict(rows(test))
        truth = Y[test].reshape(-1)
        r2.append(1 - ((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())
        mae.append(np.abs(truth - predicted).mean())
    return {"r2_mean": float(np.mean(r2)), "r2_std": float(np.std(r2)),
            "mae_mean": float(np.mean(mae)), "mae_std": float(np.std(mae))}
