"""`SequenceDataModule`: what every datamodule shares (the attributes training reads, loaders).

Batches are dicts {"inputs": (B, L) int64, "targets": (B, L) int64}; targets[:, t] is the token
position t must predict, IGNORE_INDEX where no loss is taken.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from reformer_lab.data.errors import DataError, require_bool, require_int

IGNORE_INDEX = -100
METRICS = ("bits_per_char", "bits_per_dim", "accuracy")


class SequenceDataModule(pl.LightningDataModule):
    """Base of all datamodules; subclasses set the attributes below and build the three splits.

    Attributes read by the training side:
        vocab_size: number of token ids.
        seq_len: the model input length L.
        metric: "bits_per_char" | "bits_per_dim" | "accuracy".
        axial_shape: suggested factorisation of the positions for axial embeddings, or None.
    """

    vocab_size: int
    seq_len: int
    metric: ClassVar[str]
    axial_shape: tuple[int, ...] | None = None

    def __init__(self, *, batch_size: int, num_workers: int, seed: int, pin_memory: bool) -> None:
        super().__init__()
        self.batch_size = require_int("batch_size", batch_size, minimum=1)
        self.num_workers = require_int("num_workers", num_workers, minimum=0)
        self.seed = require_int("seed", seed, minimum=0)
        self.pin_memory = require_bool("pin_memory", pin_memory)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # --- subclasses provide ---------------------------------------------------------------
    def train_sampler(self) -> Sampler[int]:
        """Order of training examples; must have set_epoch so each epoch differs."""
        raise NotImplementedError

    # --- loaders --------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return self._loader(self._split("train"), sampler=self.train_sampler())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._split("val"), sampler=None)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._split("test"), sampler=None)

    def _split(self, name: str) -> Dataset:
        dataset = getattr(self, f"{name}_set")
        if dataset is None:
            raise DataError(f"{type(self).__name__}.setup() must run before {name}_dataloader()")
        return dataset

    def _loader(self, dataset: Dataset, sampler: Sampler[int] | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=worker_start_method() if self.num_workers > 0 else None,
        )


def worker_start_method() -> str:
    """How loader workers start: the platform's usual way ('fork' on Linux, else 'spawn'),
    named explicitly because a job may run in a process whose default was changed: Hydra's
    joblib launcher runs each job in a loky worker, whose default start method ('loky') torch's
    DataLoader cannot use."""
    return "fork" if sys.platform.startswith("linux") else "spawn"
