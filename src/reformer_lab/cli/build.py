"""Turns the validated config into Lightning objects: module, callbacks, loggers, trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from reformer_lab.cli.validate import RunPlan
from reformer_lab.lit import ReformerLitModule, resolve_precision


def build_module(cfg: DictConfig, plan: RunPlan) -> ReformerLitModule:
    captured = bool(cfg.get("capture_train_step"))
    clipping = {}
    if captured:  # the module steps the optimizer, so it clips (see build_trainer)
        clipping = {
            "gradient_clip_val": cfg.trainer.get("gradient_clip_val"),
            "gradient_clip_algorithm": cfg.trainer.get("gradient_clip_algorithm") or "norm",
        }
    return ReformerLitModule(
        plan.model_config,
        optimizer=plan.optimizer,
        scheduler=plan.scheduler,
        metric=plan.datamodule.metric,
        eval_n_hashes=cfg.get("eval_n_hashes"),
        run_config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        capture_train_step=captured,
        **clipping,
    )


def build_callbacks(
    node: DictConfig | None, with_logger: bool, progress_bar: bool
) -> list[pl.Callback]:
    """Each non-null entry of the `callbacks` mapping, in order. Lightning refuses a
    LearningRateMonitor without a logger and a progress bar callback with
    trainer.enable_progress_bar=false, so those are left out in these cases."""
    if not node:
        return []
    callbacks = [instantiate(spec) for spec in node.values() if spec is not None]
    if not with_logger:
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    if not progress_bar:
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    return callbacks


def build_loggers(node: DictConfig | None, output_dir: str) -> list[Any]:
    """Each non-null entry of the `logger` mapping; W&B gets its sweep group and run name."""
    if not node:
        return []
    loggers = []
    for name, spec in node.items():
        if spec is None:
            continue
        if name == "wandb":
            group, run_name = wandb_group_and_name(output_dir)
            spec = OmegaConf.merge(
                spec, {"group": spec.get("group") or group, "name": spec.get("name") or run_name}
            )
        loggers.append(instantiate(spec))
    return loggers


def wandb_group_and_name(output_dir: str) -> tuple[str | None, str]:
    """In a multirun all jobs share the sweep folder's name as group; each is named by its
    job number and overrides. A single run is named after its folder, with no group."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra = HydraConfig.get()
        group = "_".join(Path(hydra.sweep.dir).parts[-3:])  # e.g. train_2025-01-01_12-00-00
        return group, f"{hydra.job.num}:{hydra.job.override_dirname or 'defaults'}"
    return None, "_".join(Path(output_dir).parts[-2:])


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    precision = resolve_precision(cfg.trainer.get("precision"))
    manual = {}
    if cfg.get("capture_train_step"):  # manual optimization: the module clips, not the Trainer
        manual = {"gradient_clip_val": None, "gradient_clip_algorithm": None}
    return instantiate(
        cfg.trainer,
        **manual,
        precision=precision,
        callbacks=callbacks,
        logger=loggers if loggers else False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
    )
