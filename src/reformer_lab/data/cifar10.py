"""CIFAR-10 (python version) as 3072-long pixel sequences for bits/dim modelling.

The archive holds `cifar-10-batches-py/data_batch_1..5` and `test_batch`: pickled dicts with
b"data" (10000, 3072) uint8 channel-planar and b"labels" (labels are unused: the task is
unconditional density modelling). Validation is the last `val_size` training images.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from reformer_lab.data.download import fetch, verify_file
from reformer_lab.data.errors import DataError, require_bool, require_int, require_path
from reformer_lab.data.images import ImageDataModule, PlanarImageDataset

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
REQUIRED = (*TRAIN_BATCHES, TEST_BATCH)
SIDE = 32


def cifar10_locations(path: Path) -> tuple[Path, Path]:
    """(batches folder, archive) that `path` names: the archive, the batches folder, or their parent."""
    if path.is_file():
        return path.parent / FOLDER_NAME, path
    if path.name == FOLDER_NAME or (path / TRAIN_BATCHES[0]).exists():
        return path, path.parent / ARCHIVE_NAME
    return path / FOLDER_NAME, path / ARCHIVE_NAME


def missing_batches(batches_dir: Path) -> list[str]:
    return [name for name in REQUIRED if not (batches_dir / name).is_file()]


def extract_cifar10(archive: Path, batches_dir: Path, fix: str) -> None:
    """Unpack the batches folder of `archive` to `batches_dir` via a staging folder and one rename."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}  # reads to the end: finds truncation
            absent = [f"{FOLDER_NAME}/{n}" for n in REQUIRED if f"{FOLDER_NAME}/{n}" not in members]
            if absent:
                raise DataError(
                    f"{archive} lacks {absent}: it is not the CIFAR-10 python archive. {fix}"
                )
            wanted = [m for name, m in members.items() if name.startswith(f"{FOLDER_NAME}/")]
            batches_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".cifar10-extract-", dir=batches_dir.parent))
            try:
                tar.extractall(staging, members=wanted, filter="data")
                os.replace(staging / FOLDER_NAME, batches_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"could not unpack {archive} ({err}): truncated or corrupt? {fix}") from err


def load_batch(file: Path, fix: str) -> np.ndarray:
    """b"data" of one pickled CIFAR batch, (N, 3072) uint8, after checking its format."""
    try:
        with file.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the md5-checked official archive
    except Exception as err:  # a cut-off pickle fails in many ways (EOFError, UnpicklingError, ...)
        raise DataError(
            f"{file} is not a readable CIFAR batch ({err!r}): truncated? {fix}"
        ) from err
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    ok = (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * SIDE * SIDE
        and labels is not None
        and len(labels) == data.shape[0]
    )
    if not ok:
        raise DataError(
            f'{file} is not a CIFAR-10 batch: expected a dict with b"data" (N, 3072) uint8 and '
            f'N b"labels". {fix}'
        )
    return data


class Cifar10DataModule(ImageDataModule):
    """CIFAR-10 images as 3072-long sequences (raster, channels interleaved), bits per dim.

    Args:
        path: folder holding (or receiving) `cifar-10-python.tar.gz` and/or the extracted
            `cifar-10-batches-py/`; may also name the archive or the batches folder itself.
        download: fetch `url` when no local copy exists; false -> DataError instead.
        url: where to download the archive from.
        expected_md5: md5 of the archive, checked before unpacking; None skips it.
        val_size: the last val_size training images form the validation set.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the per-epoch shuffle of the training images.
        pin_memory: pin batches in page-locked memory (for GPU training).
    """

    def __init__(
        self,
        *,
        path: str = "data/cifar10",
        download: bool = True,
        url: str = CIFAR10_URL,
        expected_md5: str | None = CIFAR10_MD5,
        val_size: int = 5000,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            height=SIDE,
            width=SIDE,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            pin_memory=pin_memory,
        )
        self.save_hyperparameters()
        self.path = require_path("path", path)
        self.download = require_bool("download", download)
        self.url = url
        self.expected_md5 = expected_md5
        self.val_size = require_int("val_size", val_size, minimum=1)
        self.batches_dir, self.archive = cifar10_locations(self.path)

    def _fix(self) -> str:
        return (
            f"Download {self.url} by hand and set data.path=/path/to/folder holding "
            f"{ARCHIVE_NAME} or {FOLDER_NAME}/."
        )

    def prepare_data(self) -> None:
        """Make `batches_dir` hold all batches: unpack the archive, downloading it if allowed."""
        absent = missing_batches(self.batches_dir)
        if not absent:
            return
        if self.batches_dir.exists():
            raise DataError(
                f"{self.batches_dir} lacks {absent}: delete that folder so prepare_data unpacks "
                f"it again, or set data.path to a complete copy. {self._fix()}"
            )
        if self.archive.exists():
            verify_file(self.archive, expected_md5=self.expected_md5, fix=self._fix())
        elif self.download:
            fetch(self.url, self.archive, expected_md5=self.expected_md5, fix=self._fix())
        else:
            raise DataError(
                f"no CIFAR-10 at {self.path} (looked for {self.batches_dir} and {self.archive}) "
                f"and data.download=false. {self._fix()}"
            )
        extract_cifar10(self.archive, self.batches_dir, self._fix())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        absent = missing_batches(self.batches_dir)
        if absent:
            raise DataError(
                f"{self.batches_dir} lacks {absent}: call prepare_data() first (the Trainer "
                f"does), or set data.path. {self._fix()}"
            )
        train = np.concatenate(
            [load_batch(self.batches_dir / b, self._fix()) for b in TRAIN_BATCHES]
        )
        test = load_batch(self.batches_dir / TEST_BATCH, self._fix())  # (10000, 3072)
        n_train = len(train)  # 50000 in the real archive
        if self.val_size >= n_train:
            raise DataError(
                f"data.val_size={self.val_size} leaves no training images out of {n_train}: lower it"
            )
        self.train_set = PlanarImageDataset(train[: n_train - self.val_size], SIDE, SIDE)
        self.val_set = PlanarImageDataset(train[n_train - self.val_size :], SIDE, SIDE)
        self.test_set = PlanarImageDataset(test, SIDE, SIDE)
