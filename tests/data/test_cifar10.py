"""Cifar10DataModule on a real-format cifar-10-python.tar.gz holding a few images."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from reformer_lab.data import Cifar10DataModule, DataError
from reformer_lab.data.cifar10 import CIFAR10_MD5, CIFAR10_URL, FOLDER_NAME
from reformer_lab.data.images import planar_to_raster

TRAIN_NAMES = [f"data_batch_{i}" for i in range(1, 6)]


def make(path, **kwargs) -> Cifar10DataModule:
    return Cifar10DataModule(
        **{
            "path": str(path),
            "download": False,
            "expected_md5": None,
            "val_size": 3,
            "batch_size": 4,
            **kwargs,
        }
    )


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path, make_cifar_tar, cifar_images):
    return make_cifar_tar(tmp_path / "cifar" / "cifar-10-python.tar.gz", cifar_images)


def test_unpacks_and_splits_last_images_off_for_validation(archive, cifar_images):
    dm = make(archive.parent, expected_md5=md5(archive))
    dm.prepare_data()
    dm.setup("fit")
    assert (archive.parent / FOLDER_NAME / "test_batch").is_file()
    train = np.concatenate([cifar_images[n] for n in TRAIN_NAMES])  # (20, 3072)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (17, 3, 3)
    for dataset, rows in (
        (dm.train_set, train[:17]),
        (dm.val_set, train[17:]),
        (dm.test_set, cifar_images["test_batch"]),
    ):
        for i in range(len(rows)):
            expected = torch.from_numpy(planar_to_raster(rows[i], 32, 32)).long()
            assert torch.equal(dataset[i]["targets"], expected)
    assert (dm.vocab_size, dm.seq_len, dm.axial_shape, dm.metric) == (
        256,
        3072,
        (32, 32, 3),
        "bits_per_dim",
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 3072) and batch["targets"].shape == (4, 3072)


def test_archive_path_and_batches_folder_path_both_work(archive):
    make(archive).prepare_data()  # the archive itself: unpacks beside it
    dm = make(archive.parent / FOLDER_NAME)
    dm.prepare_data()
    dm.setup()
    assert len(dm.test_set) == 3


def test_md5_mismatch_is_rejected_before_unpacking(archive):
    with pytest.raises(DataError, match=f"expected {CIFAR10_MD5}"):
        make(archive.parent, expected_md5=CIFAR10_MD5).prepare_data()
    assert not (archive.parent / FOLDER_NAME).exists()


def test_truncated_archive_is_rejected_and_leaves_nothing(archive):
    full_md5 = md5(archive)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="md5"):
        make(archive.parent, expected_md5=full_md5).prepare_data()
    with pytest.raises(DataError, match="truncated or corrupt"):
        make(archive.parent).prepare_data()  # md5 check off: tarfile itself notices
    assert sorted(p.name for p in archive.parent.iterdir()) == [archive.name]  # no staging left


def test_archive_missing_a_batch_is_rejected(tmp_path, make_cifar_tar, cifar_images):
    archive = make_cifar_tar(
        tmp_path / "cifar-10-python.tar.gz", cifar_images, omit=("data_batch_3",)
    )
    with pytest.raises(DataError, match="data_batch_3"):
        make(tmp_path).prepare_data()
    assert not (tmp_path / FOLDER_NAME).exists() and archive.exists()


def test_unpacked_folder_missing_a_file_is_rejected(archive):
    make(archive.parent).prepare_data()
    (archive.parent / FOLDER_NAME / "test_batch").unlink()
    with pytest.raises(DataError, match=r"test_batch.*delete that folder"):
        make(archive.parent).prepare_data()
    with pytest.raises(DataError, match="test_batch"):
        make(archive.parent).setup()


def test_truncated_or_misshapen_batch_is_rejected_in_setup(archive):
    make(archive.parent).prepare_data()
    batch_file = archive.parent / FOLDER_NAME / "data_batch_2"
    original = batch_file.read_bytes()
    batch_file.write_bytes(original[: len(original) // 2])
    with pytest.raises(DataError, match="data_batch_2 is not a readable CIFAR batch"):
        make(archive.parent).setup()
    bad = {b"data": np.zeros((4, 1024), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    batch_file.write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"\(N, 3072\) uint8"):
        make(archive.parent).setup()


def test_download_fetches_into_a_missing_folder(archive, tmp_path):
    target = tmp_path / "fresh"
    dm = make(target, download=True, url=archive.as_uri(), expected_md5=md5(archive))
    dm.prepare_data()
    dm.setup()
    assert (target / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    assert len(dm.train_set) == 17


def test_missing_path_with_download_disabled_names_url_and_config_key(tmp_path):
    with pytest.raises(DataError) as err:
        make(tmp_path / "absent").prepare_data()
    assert CIFAR10_URL in str(err.value) and "data.path=" in str(err.value)


def test_val_size_must_leave_training_images(archive):
    make(archive.parent).prepare_data()
    with pytest.raises(DataError, match=r"data\.val_size=20"):
        make(archive.parent, val_size=20).setup()


def test_training_order_is_a_fresh_seeded_permutation_each_epoch(archive):
    dm = make(archive.parent, batch_size=17)
    dm.prepare_data()
    dm.setup()
    sampler = dm.train_dataloader().sampler
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(epoch0) == sorted(epoch1) == list(range(17))
    assert epoch0 != epoch1
    twin, other = make(archive.parent), make(archive.parent, seed=1)
    for dm_ in (twin, other):
        dm_.setup()
    assert list(twin.train_dataloader().sampler) == epoch0
    assert list(other.train_dataloader().sampler) != epoch0
