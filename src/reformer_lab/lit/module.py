"""`ReformerLitModule`: the Reformer language model as a Lightning training unit.

The loss goes through `ReformerLM.loss`, which never holds the whole (batch, length, vocab)
logits at once (the memory-lean path). Validation and test may use more hash rounds than
training (`eval_n_hashes`; the paper trains with k rounds and evaluates with more, sec 5).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from reformer_lab.lit.metrics import TokenMetrics
from reformer_lab.model import ReformerConfig, ReformerLM

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
Batch = Mapping[
    str, torch.Tensor
]  # {"inputs": (B, L) int64, "targets": (B, L) int64, -100 = no loss}


class ReformerLitModule(pl.LightningModule):
    """Trains `ReformerLM` on batches {"inputs", "targets"} and logs train/val/test metrics.

    Args:
        model: a `ReformerConfig` or its fields as a mapping (what a checkpoint stores).
        optimizer: parameters -> optimizer, e.g. `functools.partial(torch.optim.Adam, lr=1e-3)`
            (Hydra builds it from `_partial_: true`). Not needed for evaluation.
        scheduler: optimizer -> LR scheduler, stepped every `scheduler_interval` ("step" | "epoch").
        metric: the task's headline metric: "bits_per_char", "bits_per_dim" or "accuracy".
        eval_n_hashes: hash rounds for validation/test; None keeps the model's `n_hashes`.
        run_config: the whole resolved run configuration, stored in checkpoints so that
            evaluation can rebuild the data (a plain dict; this module never reads it).
    """

    def __init__(
        self,
        model: ReformerConfig | Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        metric: str = "accuracy",
        eval_n_hashes: int | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        config = model if isinstance(model, ReformerConfig) else ReformerConfig(**model)
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval={scheduler_interval!r} must be 'step' or 'epoch'")
        if eval_n_hashes is not None and eval_n_hashes < 1:
            raise ValueError(f"eval_n_hashes={eval_n_hashes} must be a positive integer or None")
        # Only plain values go into the checkpoint; the factories are rebuilt from config.
        self.save_hyperparameters(
            {
                "model": _plain(config.to_dict()),
                "scheduler_interval": scheduler_interval,
                "metric": metric,
                "eval_n_hashes": eval_n_hashes,
                "run_config": dict(run_config) if run_config is not None else None,
            }
        )
        self.model = ReformerLM(config)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.eval_n_hashes = eval_n_hashes
        self.train_metrics = TokenMetrics(metric)
        self.val_metrics = TokenMetrics(metric)
        self.test_metrics = TokenMetrics(metric)

    # --- steps ----------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, n_hashes: int | None = None) -> torch.Tensor:
        return self.model(tokens, n_hashes=n_hashes)  # (B, L) -> (B, L, vocab)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step("train", batch, n_hashes=None)

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step("val", batch, n_hashes=self.eval_n_hashes)

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step("test", batch, n_hashes=self.eval_n_hashes)

    def _step(self, stage: str, batch: Batch, n_hashes: int | None) -> torch.Tensor:
        inputs, targets = batch["inputs"], batch["targets"]  # (B, L), (B, L)
        out = self.model.loss(inputs, targets, n_hashes=n_hashes)
        metrics: TokenMetrics = getattr(self, f"{stage}_metrics")
        metrics.update(out.loss, out.n_tokens, out.n_correct)
        per_step = stage == "train"  # train: every step; val/test: one token-weighted value
        for name, metric in metrics.named_metrics(stage).items():
            self.log(
                name,
                metric,
                on_step=per_step,
                on_epoch=not per_step,
                batch_size=inputs.shape[0],
                prog_bar=name.endswith(("loss", metrics.metric)),
            )
        return out.loss

    # --- optimisation ---------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError(
                "ReformerLitModule has no optimizer: pass optimizer=functools.partial(...) "
                "(Hydra: optimizer=adam) to train; evaluation does not need one"
            )
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so hyperparameters serialise to YAML and JSON."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
