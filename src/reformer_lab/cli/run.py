"""Runs one job (a training or an evaluation) and records how it ended, whatever happens.

- `result.json` in the job's folder: status ok/failed, the reason, metrics, overrides, time;
- known failures (bad config, bad data, NaN loss, out of memory) become a one-paragraph
  message naming what to change, not a traceback;
- in a multirun a failed job returns normally, so the sweep goes on to the next one;
- a W&B run is always finished before the next job starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from reformer_lab.cli.outcome import RESULT_FILE, is_global_rank_zero, write_json_atomically
from reformer_lab.cli.validate import InvalidRunConfig
from reformer_lab.data.errors import DataError
from reformer_lab.lit.callbacks import MemoryBudgetExceeded, NonFiniteLossError, oom_advice
from reformer_lab.model import ConfigError

log = logging.getLogger(__name__)

EXPLAINED = (
    InvalidRunConfig,
    ConfigError,
    DataError,
    NonFiniteLossError,
    MemoryBudgetExceeded,
    MisconfigurationException,
    InstantiationException,
    torch.cuda.OutOfMemoryError,
)
"""Errors whose message already says what to change: reported without a traceback."""

Job = Callable[[DictConfig], dict[str, Any]]
"""A job returns {"metrics": {...}, "objective": float | None, ...}; all of it goes to result.json."""


def run_recorded(cfg: DictConfig, job: Job, program: str) -> float | None:
    """Runs `job(cfg)`; returns its objective (for sweepers), or None when it failed in a sweep."""
    started = time.time()
    _one_console_for_lightning()
    outcome: dict[str, Any] = {
        "status": "failed",
        "reason": "interrupted",
        "overrides": _overrides(),
        "output_dir": cfg.paths.output_dir,
    }
    try:
        outcome.update(job(cfg))
        outcome.update(status="ok", reason=None)
        return outcome.get("objective")
    except EXPLAINED as error:
        outcome["reason"] = explain(error, cfg)
        log.error(f"{program} failed: {outcome['reason']}")
        if _in_multirun():
            return None
        raise SystemExit(f"{program}: error: {outcome['reason']}") from None
    except Exception as error:
        outcome["reason"] = f"{type(error).__name__}: {error}"
        if _in_multirun():
            log.exception(f"{program} job failed; the sweep goes on")
            return None
        raise
    finally:
        outcome["wall_seconds"] = round(time.time() - started, 1)
        trainer = outcome.pop("trainer", None)
        if is_global_rank_zero(trainer):
            write_json_atomically(Path(cfg.paths.output_dir) / RESULT_FILE, outcome)
        finish_wandb(failed=outcome["status"] != "ok")


def explain(error: BaseException, cfg: DictConfig) -> str:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return oom_advice(cfg.get("memory_budget_gb"))
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        where = str(error).splitlines()[0].rstrip(":")  # "Error in call to target 'x.Y'"
        return f"{where}: {error.__cause__}"
    return str(error)


def finish_wandb(failed: bool) -> None:
    """Close this process's W&B run (if any) so the next job of a sweep starts its own."""
    import sys

    wandb = sys.modules.get("wandb")  # only if a W&B logger was ever created
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def _one_console_for_lightning() -> None:
    """The `lightning` package prints through its own console handler and also propagates to
    the root logger, which Hydra has set up (console + <run folder>/<task>.log): drop the
    former so every message appears once, and still lands in the log file."""
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
