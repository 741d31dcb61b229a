"""Learning-rate schedules, built from torch's own schedulers where torch has them."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
)


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1
) -> LRScheduler:
    """Linear warmup from ~0 to lr over `warmup_steps`, then cosine decay to min_lr_ratio * lr."""
    if total_steps is None or total_steps <= warmup_steps:
        raise ValueError(
            f"warmup_cosine needs total_steps (trainer.max_steps={total_steps}) greater than "
            f"warmup_steps={warmup_steps}: set trainer.max_steps or lower scheduler.warmup_steps"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"scheduler.min_lr_ratio={min_lr_ratio} must be in [0, 1]")
    base_lr = optimizer.param_groups[0]["lr"]
    warmup = LinearLR(optimizer, start_factor=1.0 / max(1, warmup_steps), total_iters=warmup_steps)
    decay = CosineAnnealingLR(
        optimizer, T_max=total_steps - warmup_steps, eta_min=min_lr_ratio * base_lr
    )
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


def warmup_rsqrt(optimizer: Optimizer, warmup_steps: int) -> LRScheduler:
    """lr * min(step / warmup, sqrt(warmup / step)): the Transformer's schedule (no torch built-in)."""
    if warmup_steps < 1:
        raise ValueError(f"scheduler.warmup_steps={warmup_steps} must be >= 1")

    def factor(step: int) -> float:
        step = max(step, 1)
        return min(step / warmup_steps, math.sqrt(warmup_steps / step))

    return LambdaLR(optimizer, factor)
