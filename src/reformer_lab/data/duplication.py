"""The synthetic duplication task of the Reformer paper (sec 2.1, "Analysis on a synthetic task").

Each sequence is `0 w 0 w`: a word w of `w_len` symbols drawn uniformly from 1..vocab_size-1,
written twice, each copy after the separator 0. A model can predict the second copy exactly
only if it attends back `w_len + 1` positions, so accuracy on it measures whether LSH attention
finds the matching keys. Paper setting: vocab_size 128, w_len 511 -> length 1024.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

from reformer_lab.data.base import IGNORE_INDEX, SequenceDataModule
from reformer_lab.data.errors import require_int
from reformer_lab.data.sampling import (
    TEST_STREAM,
    TRAIN_STREAM,
    VAL_STREAM,
    EndlessStreamSampler,
    stream_rng,
)


def duplication_example(word: torch.Tensor) -> dict[str, torch.Tensor]:
    """`0 w 0 w` and its targets: only the positions that predict the second copy of w count.

    Position t predicts token t+1; the second copy sits at tokens w_len+2 .. 2*w_len+1, so the
    predicting positions are w_len+1 .. 2*w_len (w_len targets; the separator before it sees w
    at position 1 and can predict w[0]).
    """
    w_len = word.numel()
    zero = torch.zeros(1, dtype=torch.long)
    inputs = torch.cat([zero, word, zero, word])  # (2 * (w_len + 1),)
    targets = torch.full_like(inputs, IGNORE_INDEX)  # (2 * (w_len + 1),)
    targets[w_len + 1 : 2 * w_len + 1] = word
    return {"inputs": inputs, "targets": targets}


class DuplicationDataset(Dataset):
    """Example i of a seeded stream: w ~ Uniform{1..vocab_size-1}^w_len from stream_rng(seed, stream, i).

    Indices past `len(self)` are valid (the training sampler walks an endless stream).
    """

    def __init__(self, vocab_size: int, w_len: int, size: int, seed: int, stream: int) -> None:
        self.vocab_size, self.w_len, self.size = vocab_size, w_len, size
        self.seed, self.stream = seed, stream

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = stream_rng(self.seed, self.stream, index)
        word = torch.from_numpy(rng.integers(1, self.vocab_size, size=self.w_len))  # (w_len,)
        return duplication_example(word.long())


class DuplicationDataModule(SequenceDataModule):
    """Sequences `0 w 0 w` (paper sec 2.1); loss and accuracy only on the second copy of w.

    Args:
        vocab_size: symbols 0..vocab_size-1; w draws from 1..vocab_size-1 (paper: 128).
        w_len: length of w (paper: 511); seq_len = 2 * (w_len + 1).
        n_train: training sequences per epoch; every epoch draws fresh ones from the seeded stream.
        n_val: size of the fixed validation set.
        n_test: size of the fixed test set.
        batch_size: sequences per batch.
        num_workers: DataLoader worker processes.
        seed: seeds all three streams (train, val and test draw from different streams).
        pin_memory: pin batches in page-locked memory (for GPU training).
    """

    metric = "accuracy"
    axial_shape = None

    def __init__(
        self,
        *,
        vocab_size: int = 128,
        w_len: int = 511,
        n_train: int = 100_000,
        n_val: int = 1024,
        n_test: int = 1024,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, pin_memory=pin_memory
        )
        self.save_hyperparameters()
        self.vocab_size = require_int("vocab_size", vocab_size, minimum=2)
        self.w_len = require_int("w_len", w_len, minimum=1)
        self.n_train = require_int("n_train", n_train, minimum=1)
        self.n_val = require_int("n_val", n_val, minimum=1)
        self.n_test = require_int("n_test", n_test, minimum=1)
        self.seq_len = 2 * (self.w_len + 1)

    def setup(self, stage: str | None = None) -> None:
        common = {"vocab_size": self.vocab_size, "w_len": self.w_len, "seed": self.seed}
        self.train_set = DuplicationDataset(size=self.n_train, stream=TRAIN_STREAM, **common)
        self.val_set = DuplicationDataset(size=self.n_val, stream=VAL_STREAM, **common)
        self.test_set = DuplicationDataset(size=self.n_test, stream=TEST_STREAM, **common)

    def train_sampler(self) -> Sampler[int]:
        return EndlessStreamSampler(self.n_train)
