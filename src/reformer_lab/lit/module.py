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
from reformer_lab.model import LMLoss, ReformerConfig, ReformerLM
from reformer_lab.model.captured_step import CapturedTrainingStep

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
        capture_train_step: replay each training step (forward, loss, reversible backward)
            from a CUDA graph (`CapturedTrainingStep`), recorded at the first batch; batches
            of another shape run eagerly. One GPU, dropout 0, bf16 or fp32 (no loss scaler).
            The optimizer is then stepped here (manual optimization), so gradient clipping
            comes as `gradient_clip_val` / `gradient_clip_algorithm` (Lightning's
            `clip_gradients`), not as the Trainer's, which does not clip in that mode.
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
        capture_train_step: bool = False,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
    ) -> None:
        super().__init__()
        if gradient_clip_val is not None and not capture_train_step:
            raise ValueError(
                "gradient_clip_val is for capture_train_step=True; otherwise the Trainer's "
                "gradient_clip_val clips"
            )
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
        self.capture_train_step = capture_train_step
        self.automatic_optimization = not capture_train_step
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self._captured: CapturedTrainingStep | None = None

    # --- steps ----------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, n_hashes: int | None = None) -> torch.Tensor:
        return self.model(tokens, n_hashes=n_hashes)  # (B, L) -> (B, L, vocab)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.capture_train_step:
            return self._captured_training_step(batch)
        return self._step("train", batch, n_hashes=None)

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step("val", batch, n_hashes=self.eval_n_hashes)

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step("test", batch, n_hashes=self.eval_n_hashes)

    def _step(self, stage: str, batch: Batch, n_hashes: int | None) -> torch.Tensor:
        inputs, targets = batch["inputs"], batch["targets"]  # (B, L), (B, L)
        out = self.model.loss(inputs, targets, n_hashes=n_hashes)
        self._record(stage, out, inputs.shape[0])
        return out.loss

    def _captured_training_step(self, batch: Batch) -> torch.Tensor:
        """One optimizer step from the captured graph (or eagerly, for a batch of another
        shape); see `capture_train_step`."""
        inputs, targets = batch["inputs"], batch["targets"]  # (B, L), (B, L)
        if self._captured is None:
            self._captured = CapturedTrainingStep(
                self.model, inputs, targets, autocast_dtype=self._autocast_dtype()
            )
        step = self._captured
        if step.takes(inputs, targets):
            step(inputs, targets)
            out = step.result  # graph-owned: read (by the metrics) before the next replay
        else:
            out = step.eager(inputs, targets)
        self._record("train", out, inputs.shape[0])
        optimizer = self.optimizers()
        if self.gradient_clip_val is not None:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.gradient_clip_val,
                gradient_clip_algorithm=self.gradient_clip_algorithm,
            )
        optimizer.step()  # no zero_grad: each replay overwrites the gradients
        if self.scheduler_factory is not None and self.scheduler_interval == "step":
            self.lr_schedulers().step()
        return out.loss

    def on_validation_model_zero_grad(self) -> None:
        """Lightning frees the gradients before validating; with a captured step they are
        the graph's own tensors, which stay allocated anyway, so they are left in place."""
        if not self.capture_train_step:
            super().on_validation_model_zero_grad()

    def on_train_epoch_end(self) -> None:
        stepped_here = self.capture_train_step and self.scheduler_factory is not None
        if stepped_here and self.scheduler_interval == "epoch":
            self.lr_schedulers().step()

    def _autocast_dtype(self) -> torch.dtype | None:
        """The captured step's autocast dtype, from the Trainer's precision."""
        precision = str(self.trainer.precision)
        if precision.startswith("bf16"):
            return torch.bfloat16
        if precision in ("32-true", "32", "64-true", "64"):
            return None
        raise ValueError(
            f"capture_train_step needs trainer.precision bf16-mixed or 32-true, not "
            f"{precision!r} (a loss scaler cannot run inside a CUDA graph)"
        )

    def on_train_end(self) -> None:
        if self._captured is not None:  # its memory pool, and the LSH cores back to eager
            self.model.zero_grad(set_to_none=True)  # the graph's gradient tensors go too
            self._captured.release()
            self._captured = None

    def _record(self, stage: str, out: LMLoss, batch_size: int) -> None:
        """Update the stage's metrics with one batch's `LMLoss` and log them."""
        metrics: TokenMetrics = getattr(self, f"{stage}_metrics")
        metrics.update(out.loss, out.n_tokens, out.n_correct)
        per_step = stage == "train"  # train: every step; val/test: one token-weighted value
        for name, metric in metrics.named_metrics(stage).items():
            self.log(
                name,
                metric,
                on_step=per_step,
                on_epoch=not per_step,
                batch_size=batch_size,
                prog_bar=name.endswith(("loss", metrics.metric)),
            )

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
