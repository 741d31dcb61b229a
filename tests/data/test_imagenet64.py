"""ImageNet64DataModule on the downsampled-ImageNet npz layout with a few images per file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reformer_lab.data import DataError, ImageNet64DataModule
from reformer_lab.data.images import planar_to_raster

VAL_NAME = "Imagenet64_val_npz/val_data.npz"
TRAIN_NAMES = [f"Imagenet64_train_npz/train_data_batch_{i}.npz" for i in range(1, 11)]


def make(path, **kwargs) -> ImageNet64DataModule:
    return ImageNet64DataModule(**{"path": str(path), "val_size": 4, "batch_size": 2, **kwargs})


def test_caches_npz_as_memmaps_and_splits(tmp_path, make_imagenet64):
    arrays = make_imagenet64(tmp_path)
    dm = make(tmp_path)
    dm.prepare_data()
    dm.setup()
    cache = tmp_path / "npy_cache"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [f"train_data_batch_{i}.npy" for i in range(1, 11)] + ["val_data.npy"]
    )  # no .part files left
    assert isinstance(dm.test_set.rows, np.memmap)
    train = np.concatenate([arrays[n] for n in TRAIN_NAMES])  # (20, 12288), files in order 1..10
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (16, 4, 3)
    for dataset, rows in (
        (dm.train_set, train[:16]),
        (dm.val_set, train[16:]),
        (dm.test_set, arrays[VAL_NAME]),
    ):
        for i in range(len(rows)):
            expected = torch.from_numpy(planar_to_raster(rows[i], 64, 64)).long()
            assert torch.equal(dataset[i]["targets"], expected)
    assert (dm.seq_len, dm.axial_shape, dm.vocab_size, dm.metric) == (
        12288,
        (64, 64, 3),
        256,
        "bits_per_dim",
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (2, 12288)


def test_missing_files_error_explains_where_to_get_them(tmp_path, make_imagenet64):
    make_imagenet64(tmp_path)
    (tmp_path / VAL_NAME).unlink()
    with pytest.raises(DataError) as err:
        make(tmp_path).prepare_data()
    message = str(err.value)
    assert "lacks ['Imagenet64_val_npz/val_data.npz']" in message
    assert "image-net.org" in message and "data.path=" in message
    assert "Imagenet64_train_npz/train_data_batch_1.npz" in message  # the expected layout


def test_setup_without_cache_asks_for_prepare_data(tmp_path, make_imagenet64):
    make_imagenet64(tmp_path)
    with pytest.raises(DataError, match="call prepare_data"):
        make(tmp_path).setup()


def test_misshapen_and_truncated_npz_are_rejected(tmp_path, make_imagenet64):
    make_imagenet64(tmp_path)
    bad = tmp_path / TRAIN_NAMES[3]
    np.savez(bad, data=np.zeros((2, 3072), dtype=np.uint8), labels=[1, 2])
    with pytest.raises(DataError, match=r"\(2, 3072\), expected \(N, 12288\) uint8"):
        make(tmp_path).prepare_data()
    make_imagenet64(tmp_path)
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated or corrupt"):
        make(tmp_path, cache_dir=str(tmp_path / "other_cache")).prepare_data()
    assert not (tmp_path / "other_cache" / "train_data_batch_4.npy").exists()
