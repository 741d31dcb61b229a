"""Stop a run at the first NaN/inf loss, before it can touch the weights or a checkpoint."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message says what to try next."""


class StopOnNonFiniteLoss(Callback):
    """Raises `NonFiniteLossError` in `on_before_backward` when the loss is not finite.

    The check runs before backward, so neither the weights nor the optimizer state see the
    bad step, and checkpoints already written (last/best) stay the last good ones. Under DDP
    every rank learns of a non-finite loss on any rank, so all stop together instead of
    hanging in the next all-reduce.
    """

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        is_bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            is_bad = trainer.strategy.reduce_boolean_decision(is_bad, all=False)
        if is_bad:
            raise NonFiniteLossError(_message(trainer, loss))


def _message(trainer: pl.Trainer, loss: torch.Tensor) -> str:
    checkpoint = trainer.checkpoint_callback
    last_good = None
    if isinstance(checkpoint, ModelCheckpoint):
        last_good = checkpoint.last_model_path or checkpoint.best_model_path or None
    kept = (
        f"the last good checkpoint is {last_good} (resume with ckpt_path={last_good})"
        if last_good
        else "no checkpoint had been written yet"
    )
    return (
        f"training loss became {loss.detach().float().item()} at step {trainer.global_step} "
        f"(epoch {trainer.current_epoch}); the run stopped before this step changed any weight, "
        f"and {kept}. To avoid it: lower optimizer.lr, add a warmup (scheduler=warmup_cosine), "
        f"clip gradients (trainer.gradient_clip_val=1.0), or train in trainer.precision=32-true "
        f"or bf16-mixed instead of 16-mixed."
    )
