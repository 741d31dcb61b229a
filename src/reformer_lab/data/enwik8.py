"""enwik8: the first 10^8 bytes of an English Wikipedia dump (Hutter prize), paper sec 5.

Standard split: bytes [0, 90M) train, [90M, 95M) val, [95M, 100M) test; vocab = 256 bytes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from reformer_lab.data.bytes_text import ByteTextDataModule
from reformer_lab.data.download import extract_zip_member, fetch, verify_file
from reformer_lab.data.errors import DataError, require_bool, require_int, require_path

ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_SIZE = 100_000_000
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"  # published at mattmahoney.net/dc/textdata.html
ENWIK8_SPLIT = (0.9, 0.05, 0.05)


def enwik8_locations(path: Path) -> tuple[Path, Path]:
    """(raw file, zip) that `path` names: the raw file, the zip, or a folder holding/receiving them.

    A path that does not exist is a folder to download into, unless it ends in `.zip`.
    """
    if path.is_file():
        if path.suffix == ".zip" or zipfile.is_zipfile(path):
            return path.parent / "enwik8", path
        return path, path.parent / "enwik8.zip"
    if path.exists() or path.suffix != ".zip":
        return path / "enwik8", path / "enwik8.zip"
    return path.parent / "enwik8", path


class Enwik8DataModule(ByteTextDataModule):
    """Byte-level enwik8 (90M / 5M / 5M split), metric bits per character.

    Args:
        path: the `enwik8` file, `enwik8.zip`, or a folder holding either; a missing path is
            a folder that `prepare_data` downloads into (`<path>/enwik8.zip`, `<path>/enwik8`).
        download: fetch `url` when no local copy exists; false -> DataError instead.
        url: where to download enwik8.zip from.
        expected_size: exact byte size of enwik8 (tests use small stand-ins).
        expected_md5: md5 of enwik8, checked in prepare_data; None skips it.
        seq_len: model input length (paper: 65536); windows are seq_len + 1 bytes.
        train_samples_per_epoch: random training windows per epoch; None = one pass worth of
            bytes, ceil(90M / seq_len). Every epoch draws fresh windows.
        batch_size: sequences per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the training windows.
        pin_memory: pin batches in page-locked memory (for GPU training).
    """

    def __init__(
        self,
        *,
        path: str = "data/enwik8",
        download: bool = True,
        url: str = ENWIK8_URL,
        expected_size: int = ENWIK8_SIZE,
        expected_md5: str | None = ENWIK8_MD5,
        seq_len: int = 65536,
        train_samples_per_epoch: int | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            seq_len=seq_len,
            split=ENWIK8_SPLIT,
            train_samples_per_epoch=train_samples_per_epoch,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            pin_memory=pin_memory,
        )
        self.save_hyperparameters()
        self.path = require_path("path", path)
        self.download = require_bool("download", download)
        self.url = url
        self.expected_size = require_int("expected_size", expected_size, minimum=2)
        self.expected_md5 = expected_md5
        self.raw_file, self.zip_file = enwik8_locations(self.path)

    def _fix(self) -> str:
        return (
            f"Download {self.url} by hand (or unzip it) and set data.path=/path/to/enwik8 "
            f"(the file, the zip or their folder)."
        )

    def prepare_data(self) -> None:
        """Make `raw_file` exist and verify it: extract the zip, downloading it first if allowed."""
        if self.raw_file.exists():
            self._verify(self.raw_file)
            return
        if not self.zip_file.exists():
            if not self.download:
                raise DataError(
                    f"no enwik8 at {self.path} (looked for {self.raw_file} and {self.zip_file}) "
                    f"and data.download=false. {self._fix()}"
                )
            fetch(self.url, self.zip_file, fix=self._fix())
        # Verified as <raw_file>.part, before the rename: a bad zip leaves no raw file behind.
        extract_zip_member(
            self.zip_file, "enwik8", self.raw_file, check=self._verify, fix=self._fix()
        )

    def _verify(self, file: Path) -> None:
        verify_file(
            file, expected_size=self.expected_size, expected_md5=self.expected_md5, fix=self._fix()
        )

    def load_bytes(self) -> np.ndarray:
        if not self.raw_file.is_file():
            raise DataError(
                f"{self.raw_file} does not exist: call prepare_data() first (the Trainer does), "
                f"or set data.path. {self._fix()}"
            )
        # Size only here (cheap, and catches truncation); prepare_data checked the md5.
        verify_file(self.raw_file, expected_size=self.expected_size, fix=self._fix())
        return np.fromfile(self.raw_file, dtype=np.uint8)  # (100M,) ~ 100 MB in RAM
