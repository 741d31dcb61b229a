"""Exact resume: the training samplers see the same epoch number as in a run that never stopped.

Lightning 2.6 calls `sampler.set_epoch(epoch_progress.current.processed)`. After resuming from
a checkpoint written at the end of an epoch (the usual last.ckpt, saved by the validation that
closes the epoch) that counter runs one ahead of `trainer.current_epoch`, so the resumed run
would draw epoch e+1's examples where an uninterrupted run draws epoch e's. This callback sets
every training sampler's epoch to `trainer.current_epoch` at the start of each epoch, before
the epoch's iterator is created. Resuming mid-epoch is exact only with a stateful data loader
(Lightning checkpoints loaders that have `state_dict`); otherwise the epoch restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader


class SamplerEpochFromTrainer(Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for loader in _loaders(trainer.train_dataloader):
            for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
                if callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(trainer.current_epoch)


def _loaders(node: Any) -> Iterator[DataLoader]:
    """The DataLoaders inside Lightning's train_dataloader (one loader, or a list/dict of them)."""
    if isinstance(node, DataLoader):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _loaders(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _loaders(value)
