"""Seeded randomness that depends only on (seed, stream, index): no global RNG, no worker state.

Each random example is drawn from its own generator `stream_rng(seed, stream, index)`, so an
example is the same whichever worker builds it, and a resumed run sees the same data. The
samplers below get `set_epoch(epoch)` from Lightning at the start of every epoch (also through
its DDP sampler wrapper), so each epoch sees fresh examples / a fresh order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

TRAIN_STREAM, VAL_STREAM, TEST_STREAM = 0, 1, 2


def stream_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of example `index` of `stream` (train/val/test) under `seed`."""
    return np.random.default_rng([seed, stream, index])


class EndlessStreamSampler(Sampler[int]):
    """Epoch e yields indices e*n, ..., (e+1)*n - 1 of an endless seeded stream of examples."""

    def __init__(self, samples_per_epoch: int) -> None:
        self.samples_per_epoch = samples_per_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __iter__(self) -> Iterator[int]:
        first = self.epoch * self.samples_per_epoch
        return iter(range(first, first + self.samples_per_epoch))


class EpochShuffleSampler(Sampler[int]):
    """A permutation of range(size) drawn from (seed, epoch): reshuffled every epoch, reproducibly."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        return iter(order.tolist())
