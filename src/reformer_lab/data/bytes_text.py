"""Byte-level language modelling over one long byte string (enwik8, any text file).

Tokens are bytes (vocab 256). The bytes are cut into contiguous train / val / test spans.
Training examples are random windows of seq_len + 1 bytes (inputs = window[:-1],
targets = window[1:]); val/test are consecutive windows whose targets tile the span exactly
once, so bits-per-char is over every byte of the split. The first val/test target is
predicted from the byte just before the span (the last byte of the previous split), which is
context only, never a target.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from reformer_lab.data.base import IGNORE_INDEX, SequenceDataModule
from reformer_lab.data.errors import DataError, require_fractions, require_int
from reformer_lab.data.sampling import TRAIN_STREAM, EndlessStreamSampler, stream_rng


def split_bounds(n_bytes: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """(train_end, val_end): train = [0, train_end), val = [train_end, val_end), test = the rest."""
    train_end = round(n_bytes * fractions[0])
    val_end = round(n_bytes * (fractions[0] + fractions[1]))
    return train_end, val_end


class RandomCropDataset(Dataset):
    """Example i: the window of seq_len + 1 bytes starting at a start drawn from stream_rng(seed, train, i).

    Indices past `len(self)` are valid (the training sampler walks an endless stream).
    """

    def __init__(self, data: torch.Tensor, seq_len: int, size: int, seed: int) -> None:
        self.data, self.seq_len, self.size, self.seed = (
            data,
            seq_len,
            size,
            seed,
        )  # data: (n,) uint8
        self.n_starts = data.numel() - seq_len  # starts 0 .. n - seq_len - 1

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = int(stream_rng(self.seed, TRAIN_STREAM, index).integers(0, self.n_starts))
        window = self.data[start : start + self.seq_len + 1].long()  # (seq_len + 1,)
        return {"inputs": window[:-1], "targets": window[1:]}


class TilingWindowDataset(Dataset):
    """Windows whose targets tile data[first:end] once; the last is padded (inputs 0, targets -100)."""

    def __init__(self, data: torch.Tensor, first: int, end: int, seq_len: int) -> None:
        assert 1 <= first < end <= data.numel(), "val/test spans follow a non-empty train span"
        self.data, self.first, self.end, self.seq_len = (
            data,
            first,
            end,
            seq_len,
        )  # data: (n,) uint8

    def __len__(self) -> int:
        return math.ceil((self.end - self.first) / self.seq_len)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        t0 = self.first + index * self.seq_len
        t1 = min(t0 + self.seq_len, self.end)
        inputs = torch.zeros(self.seq_len, dtype=torch.long)  # (seq_len,)
        targets = torch.full((self.seq_len,), IGNORE_INDEX, dtype=torch.long)  # (seq_len,)
        inputs[: t1 - t0] = self.data[t0 - 1 : t1 - 1]
        targets[: t1 - t0] = self.data[t0:t1]
        return {"inputs": inputs, "targets": targets}


class ByteTextDataModule(SequenceDataModule):
    """Shared logic of Enwik8DataModule and TextFileDataModule; subclasses supply `load_bytes`."""

    vocab_size = 256
    metric = "bits_per_char"
    axial_shape = None

    def __init__(
        self,
        *,
        seq_len: int,
        split: tuple[float, float, float],
        train_samples_per_epoch: int | None,
        batch_size: int,
        num_workers: int,
        seed: int,
        pin_memory: bool,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, pin_memory=pin_memory
        )
        self.seq_len = require_int("seq_len", seq_len, minimum=1)
        self.split = require_fractions("split", split, count=3)
        if train_samples_per_epoch is not None:
            require_int("train_samples_per_epoch", train_samples_per_epoch, minimum=1)
        self.train_samples_per_epoch = train_samples_per_epoch

    def load_bytes(self) -> np.ndarray:
        """The whole corpus as a (n_bytes,) uint8 array; DataError if missing or corrupt."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        data = torch.from_numpy(self.load_bytes())  # (n_bytes,) uint8
        n_bytes = data.numel()
        train_end, val_end = split_bounds(n_bytes, self.split)
        if train_end < self.seq_len + 1:
            raise DataError(
                f"the train split has {train_end:,} bytes, fewer than seq_len + 1 = "
                f"{self.seq_len + 1:,}: lower data.seq_len or use more text"
            )
        if not train_end < val_end < n_bytes:
            raise DataError(
                f"{n_bytes:,} bytes split by {list(self.split)} leave an empty val or test span: "
                f"use more text or change data.split"
            )
        samples = self.train_samples_per_epoch or math.ceil(train_end / self.seq_len)
        self.train_set = RandomCropDataset(data[:train_end], self.seq_len, samples, self.seed)
        self.val_set = TilingWindowDataset(data, train_end, val_end, self.seq_len)
        self.test_set = TilingWindowDataset(data, val_end, n_bytes, self.seq_len)

    def train_sampler(self) -> Sampler[int]:
        assert self.train_set is not None
        return EndlessStreamSampler(len(self.train_set))
