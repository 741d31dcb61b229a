"""Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017) as 12288-long pixel sequences, paper sec 5.

It cannot be downloaded automatically (image-net.org needs a login). Expected layout:

    <path>/Imagenet64_train_npz/train_data_batch_1.npz ... train_data_batch_10.npz
    <path>/Imagenet64_val_npz/val_data.npz

Each npz holds "data" (N, 12288) uint8 channel-planar like CIFAR, "labels" and (train) "mean".
npz members cannot be memory-mapped, so `prepare_data` copies each "data" array once into
`<cache_dir>/<name>.npy` (about 16 GB for train), which `setup` memory-maps: RAM stays small.
Splits: train = the training batches minus their last `val_size` images, val = those images,
test = the official validation set (the set papers report imagenet64 bits/dim on).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset, Subset

from reformer_lab.data.download import write_atomically
from reformer_lab.data.errors import DataError, require_int, require_path
from reformer_lab.data.images import ImageDataModule, PlanarImageDataset

SIDE = 64
ROW_BYTES = 3 * SIDE * SIDE
TRAIN_FILES = tuple(f"Imagenet64_train_npz/train_data_batch_{i}.npz" for i in range(1, 11))
VAL_FILE = "Imagenet64_val_npz/val_data.npz"
DOWNLOAD_PAGE = "https://image-net.org/download-images.php"


def how_to_get(path: Path) -> str:
    return (
        f"Downsampled ImageNet 64x64 needs a login: download Imagenet64_train_npz.zip and "
        f"Imagenet64_val_npz.zip from {DOWNLOAD_PAGE} and unzip them so that "
        f"{path}/{TRAIN_FILES[0]} ... {path}/{TRAIN_FILES[-1]} and {path}/{VAL_FILE} exist, "
        f"then set data.path=/path/to/that/folder."
    )


def read_npz_data(file: Path, fix: str) -> np.ndarray:
    """The "data" array of one npz batch, (N, 12288) uint8, after checking its format."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            data = npz["data"]
    except KeyError as err:
        raise DataError(
            f'{file} has no "data" array: not a downsampled-ImageNet batch. {fix}'
        ) from err
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as err:
        raise DataError(
            f"{file} is not a readable npz ({err}): truncated or corrupt? {fix}"
        ) from err
    check_rows(data, file, fix)
    return data


def check_rows(data: np.ndarray, file: Path, fix: str) -> None:
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        raise DataError(
            f'{file}: "data" is {data.dtype} {data.shape}, expected (N, {ROW_BYTES}) uint8. {fix}'
        )


class ImageNet64DataModule(ImageDataModule):
    """ImageNet 64x64 images as 12288-long sequences (raster, channels interleaved), bits per dim.

    Args:
        path: folder holding Imagenet64_train_npz/ and Imagenet64_val_npz/ (see module docstring).
        cache_dir: where the memory-mappable .npy copies go; None = `<path>/npy_cache`.
        val_size: the last val_size training images form the validation set.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the per-epoch shuffle of the training images.
        pin_memory: pin batches in page-locked memory (for GPU training).
    """

    def __init__(
        self,
        *,
        path: str = "data/imagenet64",
        cache_dir: str | None = None,
        val_size: int = 10_000,
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
        self.cache_dir = (
            require_path("cache_dir", cache_dir)
            if cache_dir is not None
            else self.path / "npy_cache"
        )
        self.val_size = require_int("val_size", val_size, minimum=1)

    def _cache_file(self, npz_name: str) -> Path:
        return self.cache_dir / (Path(npz_name).stem + ".npy")

    def prepare_data(self) -> None:
        """Check every npz is there, then copy each "data" array to its .npy cache (once)."""
        fix = how_to_get(self.path)
        absent = [name for name in (*TRAIN_FILES, VAL_FILE) if not (self.path / name).is_file()]
        if absent:
            raise DataError(f"{self.path} lacks {absent}. {fix}")
        for name in (*TRAIN_FILES, VAL_FILE):
            cache = self._cache_file(name)
            if cache.exists():
                continue
            print(f"caching {self.path / name} -> {cache}", flush=True)
            data = read_npz_data(self.path / name, fix)  # (N, 12288) uint8
            write_atomically(cache, lambda out, data=data: np.save(out, data, allow_pickle=False))

    def _open_cache(self, npz_name: str) -> np.ndarray:
        cache = self._cache_file(npz_name)
        if not cache.is_file():
            raise DataError(
                f"{cache} does not exist: call prepare_data() first (the Trainer does). "
                f"{how_to_get(self.path)}"
            )
        rebuild = f"Delete {cache} so prepare_data rebuilds it."
        try:
            rows = np.load(cache, mmap_mode="r", allow_pickle=False)  # (N, 12288) uint8, on disk
        except (ValueError, OSError) as err:
            raise DataError(f"{cache} is unreadable ({err}). {rebuild}") from err
        check_rows(rows, cache, rebuild)
        return rows

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train = ConcatDataset(
            [PlanarImageDataset(self._open_cache(n), SIDE, SIDE) for n in TRAIN_FILES]
        )
        n_train = len(train)  # 1,281,167 in the real data
        if self.val_size >= n_train:
            raise DataError(
                f"data.val_size={self.val_size} leaves no training images out of {n_train}: lower it"
            )
        self.train_set = Subset(train, range(n_train - self.val_size))
        self.val_set = Subset(train, range(n_train - self.val_size, n_train))
        self.test_set = PlanarImageDataset(self._open_cache(VAL_FILE), SIDE, SIDE)
