"""Byte-level language modelling on any local text: one file, or every file in a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reformer_lab.data.bytes_text import ByteTextDataModule
from reformer_lab.data.errors import DataError, require_path


def corpus_files(path: Path) -> list[Path]:
    """`path` itself, or every non-hidden file under the folder `path`, sorted by relative path."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path} does not exist: set data.path=/path/to/text (a file or a folder)")
    files = sorted(
        (p for p in path.rglob("*") if p.is_file()),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    visible = [
        p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]
    if not visible:
        raise DataError(f"{path} holds no files: set data.path to a text file or a folder of them")
    return visible


class TextFileDataModule(ByteTextDataModule):
    """Bytes of a local file, or of all files in a folder concatenated in sorted order.

    Hidden files and folders (names starting with '.') are skipped. Metric: bits per character.

    Args:
        path: a file, or a folder whose files (recursively, sorted by relative path) are joined.
        split: train / val / test fractions of the bytes, in that order, summing to 1.
        seq_len: model input length; windows are seq_len + 1 bytes.
        train_samples_per_epoch: random training windows per epoch; None = one pass worth of
            bytes, ceil(train_bytes / seq_len). Every epoch draws fresh windows.
        batch_size: sequences per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the training windows.
        pin_memory: pin batches in page-locked memory (for GPU training).
    """

    def __init__(
        self,
        *,
        path: str,
        split: tuple[float, float, float] = (0.9, 0.05, 0.05),
        seq_len: int = 1024,
        train_samples_per_epoch: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            seq_len=seq_len,
            split=split,
            train_samples_per_epoch=train_samples_per_epoch,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            pin_memory=pin_memory,
        )
        self.save_hyperparameters()
        self.path = require_path("path", path)

    def prepare_data(self) -> None:
        corpus_files(self.path)  # fails early, before the Trainer builds anything

    def load_bytes(self) -> np.ndarray:
        parts = [np.fromfile(f, dtype=np.uint8) for f in corpus_files(self.path)]
        return np.concatenate(parts)  # (n_bytes,) uint8
