"""What ``train.py`` runs: ``task=train`` (fine-tune + embed) and ``task=embed``.

Output layout of a ``train`` run (``paths.output_dir``)::

    checkpoints/model.pt        mlipprobe checkpoint (weights + hyperparameters, safe to load)
    checkpoints/model.model     mace-compatible export (MACE backbones)
    checkpoints/lightning/      Lightning checkpoints (best, last)
    embeddings/parent.h5        features of the starting checkpoint (fine-tuning runs)
    embeddings/trained.h5       features of the trained model
    metrics.json                final validation and test metrics
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from mlipprobe import sweeps
from mlipprobe.backbones import build_backbone
from mlipprobe.io import atomic_path
from mlipprobe.training import PotentialModule, head_specs

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The configuration cannot run as given."""


def _instantiate_list(section: DictConfig | None) -> list:
    if not section:
        return []
    return [hydra.utils.instantiate(c) for c in section.values() if c is not None and "_target_" in c]


def _trainer(cfg: DictConfig, **overrides) -> L.Trainer:
    if cfg.trainer.get("inference_mode", False):
        raise ConfigError(
            "trainer.inference_mode=true disables autograd in validation and test, but forces "
            "and stress are gradients of the energy: leave it false"
        )
    loggers = _instantiate_list(cfg.get("logger"))
    if any(isinstance(logger, L.pytorch.loggers.WandbLogger) for logger in loggers):  # its run starts lazily
        keep_wandb_files_in(Path(cfg.paths.output_dir) / "wandb")
    callbacks = _instantiate_list(cfg.get("callbacks"))
    if not loggers:  # Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def keep_wandb_files_in(folder: Path) -> None:
    """wandb's run files, cache and artifact staging stay inside the job's output folder,
    so that parallel jobs do not share them and offline runs can be synced from there."""
    import os

    for variable, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str((folder / sub).resolve())


def _log_embedding_artifact(trainer: L.Trainer, outputs: dict, name: str) -> None:
    """The job's embedding files as one wandb artifact of type ``embeddings``."""
    from lightning.pytorch.loggers import WandbLogger

    files = [outputs[k] for k in ("parent_embeddings", "embeddings") if k in outputs]
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and files:
            import wandb

            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "-", f"embeddings-{name}")[:128], type="embeddings")
            for path in files:
                artifact.add_file(str(path), name=Path(path).name)
            logger.experiment.log_artifact(artifact)


def _parallel_layout(trainer_cfg: DictConfig) -> dict[str, Any]:
    """The training trainer's devices, nodes and strategy: under DDP every rank embeds its share
    (a trainer of its own on one device would write the same file from every rank)."""
    strategy = trainer_cfg.get("strategy", "auto")
    return {
        "devices": trainer_cfg.get("devices", 1),
        "num_nodes": trainer_cfg.get("num_nodes", 1),
        "strategy": hydra.utils.instantiate(strategy) if OmegaConf.is_dict(strategy) else strategy,
    }


def _load_tested_weights(trainer: L.Trainer, module: PotentialModule) -> None:
    """Spawned ranks (``ddp_spawn``) tested the best checkpoint in their own memory: load it
    here too, so that the saved model is the tested one, as without spawning."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher) and best:
        module.load_state_dict(trainer.strategy.load_checkpoint(best)["state_dict"])


def _embed(backbone, datamodule, cfg: DictConfig, path: Path, role: str) -> Path:
    from mlipprobe.embeddings import write_embeddings

    attributes = {"strategy": cfg.strategy.name if "strategy" in cfg else "", "role": role}
    trainer_kwargs = {
        "accelerator": cfg.trainer.get("accelerator", "auto"),
        **_parallel_layout(cfg.trainer),
        "inference_mode": False,  # no_grad: tensors it makes (cached graphs, PET scales) stay usable in training
        "enable_progress_bar": cfg.trainer.get("enable_progress_bar", True),
    }
    write_embeddings(backbone, datamodule, path, list(cfg.embed.features), attributes, trainer_kwargs)
    log.info("Embeddings (%s) written to %s", role, path)
    return path


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fine-tune (or train from scratch) and write checkpoints and embeddings.

    Returns ``(metrics, objects)``: final metrics and the built objects (for tests).
    """
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = hydra.utils.instantiate(cfg.data).load()
    train_structures = datamodule.split("train")
    datamodule.split("val")
    backbone = hydra.utils.instantiate(cfg.backbone, structures=train_structures)
    strategy = hydra.utils.instantiate(cfg.strategy)
    backbone.check_elements(datamodule.structures, source=datamodule.path)
    if not backbone.trainable:
        raise ConfigError(
            f"{backbone.source} is an exported model: it can be embedded (task=embed) but not "
            "trained. Fine-tune the checkpoint it was exported from (a metatrain .ckpt) instead."
        )
    outputs: dict[str, Any] = {}
    parent_file = output_dir / "embeddings" / "parent.h5"
    if cfg.embed.parent and cfg.backbone.get("checkpoint"):
        if cfg.get("ckpt_path") and parent_file.is_file():  # a resumed job embedded its parent already
            outputs["parent_embeddings"] = parent_file
        else:
            outputs["parent_embeddings"] = _embed(backbone, datamodule, cfg, parent_file, "parent")

    strategy.prepare(backbone, head_specs(datamodule.keys, train_structures), seed=cfg.seed)
    module = PotentialModule(
        backbone,
        datamodule.keys,
        strategy,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        loss_weights=OmegaConf.to_container(cfg.loss_weights) if cfg.get("loss_weights") else None,
    )
    module.normalize_new_heads(train_structures)
    datamodule.attach(backbone)
    trainer = _trainer(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if not cfg.trainer.get("fast_dev_run"):
        for result in trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False):
            metrics.update({k: float(v) for k, v in result.items()})
        _load_tested_weights(trainer, module)

    metadata = {
        "strategy": strategy.name,
        "parent": backbone.source,
        "parent_sha256": backbone.source_sha256,
        "dataset": datamodule.path,
        "dataset_sha256": datamodule.sha256,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if strategy.lora_rank is not None:
        backbone.merge_lora()  # every checkpoint and export is a plain model
    checkpoint = outputs["checkpoint"] = output_dir / "checkpoints" / "model.pt"
    if backbone.export_suffix:
        outputs["export"] = output_dir / "checkpoints" / f"model{backbone.export_suffix}"
    if trainer.is_global_zero:  # under DDP rank 0 writes the files; the other ranks wait, then read them
        backbone.save(checkpoint, metadata=metadata)
        if backbone.export_suffix:
            backbone.export(outputs["export"])
    trainer.strategy.barrier("model_saved")
    trained = build_backbone(checkpoint=str(checkpoint), dtype=cfg.dtype)
    outputs["embeddings"] = _embed(trained, datamodule, cfg, output_dir / "embeddings" / "trained.h5", "trained")
    _log_embedding_artifact(trainer, outputs, output_dir.name)
    if trainer.is_global_zero:
        with atomic_path(output_dir / "metrics.json") as temporary:
            temporary.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    for name, path in outputs.items():
        log.info("%s: %s", name, path)
    return metrics, {"backbone": backbone, "module": module, "trainer": trainer, "datamodule": datamodule, **outputs}


def embed(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the embeddings of ``backbone.checkpoint`` on ``data.embed_split``."""
    if not cfg.backbone.get("checkpoint"):
        raise ConfigError("task=embed needs backbone.checkpoint=PATH")
    datamodule = hydra.utils.instantiate(cfg.data).load()
    backbone = hydra.utils.instantiate(cfg.backbone)
    backbone.check_elements(datamodule.structures, source=datamodule.path)
    path = Path(cfg.embed.output or Path(cfg.paths.output_dir) / "embeddings" / f"{Path(cfg.backbone.checkpoint).stem}.h5")
    _embed(backbone, datamodule, cfg, path, "checkpoint")
    return {}, {"embeddings": path, "backbone": backbone}


TASKS = {"train": train, "embed": embed}


def run(cfg: DictConfig) -> float | None:
    """Run ``cfg.task``; return the metric a sweeper optimises (``cfg.optimized_metric``)."""
    if cfg.task not in TASKS:
        raise ConfigError(f"task must be one of {sorted(TASKS)}, got '{cfg.task}'")
    if cfg.task != "train":
        metrics, _ = TASKS[cfg.task](cfg)
        return metrics.get(cfg.get("optimized_metric") or "", None)
    sweeps.run_requirements(cfg, run)
    record, finished = sweeps.start_job(cfg)
    if finished:
        return (record.data.get("metrics") or {}).get(cfg.get("optimized_metric") or "")
    try:
        metrics, objects = train(cfg)
    except BaseException as error:
        sweeps.end_job(record, error=error)
        raise
    outputs = {k: v for k, v in objects.items() if isinstance(v, Path)}
    sweeps.end_job(record, metrics, outputs)
    return metrics.get(cfg.get("optimized_metric") or "", None)
