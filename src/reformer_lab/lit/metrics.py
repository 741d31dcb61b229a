"""Token-weighted metrics: bits per character / dimension and accuracy (paper sec 5).

A batch's loss is the mean cross-entropy (nats) over its counted targets. Averaging those
means over batches would weight a short batch like a long one, so each metric keeps two sums
over batches (and, through torchmetrics' sync, over DDP ranks) and divides at the end:

    loss     = sum_b loss_b * n_b / sum_b n_b              nats per counted token
    bits     = loss / ln 2                                 bits per char (bytes) / per dim (pixels)
    accuracy = sum_b n_correct_b / sum_b n_b

(torchmetrics' MeanMetric would do the first with weights, but with nan_strategy="disable",
the one setting that keeps a NaN loss visible, torchmetrics 1.9 drops the weights.)
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchmetrics import Metric

BITS_METRICS = ("bits_per_char", "bits_per_dim")
METRICS = (*BITS_METRICS, "accuracy")


class TokenAverage(Metric):
    """sum(total) / sum(count) over all updates (and ranks), times `scale`."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, total: torch.Tensor, count: torch.Tensor) -> None:
        self.total += total.detach().to(torch.float64)
        self.count += count.detach().to(torch.float64)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count * self.scale).float()  # NaN if nothing was counted


class TokenMetrics(nn.Module):
    """Loss (nats), bits (under the task's name) and accuracy for one stage (train/val/test).

    `metric` is the data module's headline metric; bits are only logged for the text and
    image tasks, accuracy always (it is the duplication task's headline, and cheap).
    """

    def __init__(self, metric: str) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is unknown; choose from {METRICS}")
        self.metric = metric
        self.loss = TokenAverage()
        self.bits = TokenAverage(scale=1 / math.log(2)) if metric in BITS_METRICS else None
        self.accuracy = TokenAverage()

    def update(self, loss: torch.Tensor, n_tokens: torch.Tensor, n_correct: torch.Tensor) -> None:
        """loss: () mean nats over this batch's n_tokens counted targets; n_correct: () int.

        Calls each metric (forward), which accumulates and also keeps this batch's value,
        so the same objects serve per-step (train) and per-epoch (val/test) logging.
        """
        nats = loss.detach().double() * n_tokens  # () summed nats of this batch
        self.loss(nats, n_tokens)
        if self.bits is not None:
            self.bits(nats, n_tokens)
        self.accuracy(n_correct, n_tokens)

    def named_metrics(self, stage: str) -> dict[str, TokenAverage]:
        """{"val/loss": ..., "val/bits_per_char": ..., "val/accuracy": ...} for `self.log`."""
        named = {f"{stage}/loss": self.loss, f"{stage}/accuracy": self.accuracy}
        if self.bits is not None:
            named[f"{stage}/{self.metric}"] = self.bits
        return named
