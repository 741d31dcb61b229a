"""Small stand-ins for the real data files, written in their exact real formats (no network)."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")


def write_enwik8_zip(zip_path: Path, payload: bytes, member: str = "enwik8") -> Path:
    """A zip like enwik8.zip: one deflated member named `enwik8`."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, payload)
    return zip_path


def cifar_batch_bytes(data: np.ndarray, label: str) -> bytes:
    """A pickled CIFAR-10 batch: the dict layout of the real files, bytes keys."""
    batch = {
        b"batch_label": label.encode(),
        b"labels": [int(i % 10) for i in range(len(data))],
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(data))],
    }
    return pickle.dumps(batch, protocol=2)


def write_cifar_tar(
    tar_path: Path, images: dict[str, np.ndarray], omit: tuple[str, ...] = ()
) -> Path:
    """A cifar-10-python.tar.gz: `cifar-10-batches-py/` with the batches, meta and readme."""
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w:gz") as tar:
        folder = tarfile.TarInfo(CIFAR_FOLDER)
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        files = {name: cifar_batch_bytes(data, name) for name, data in images.items()}
        files["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]}, protocol=2)
        files["readme.html"] = b"<html></html>"
        for name, payload in files.items():
            if name in omit:
                continue
            info = tarfile.TarInfo(f"{CIFAR_FOLDER}/{name}")
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
    return tar_path


@pytest.fixture
def cifar_images() -> dict[str, np.ndarray]:
    """4 random planar images per training batch, 3 in the test batch."""
    rng = np.random.default_rng(1234)
    images = {name: rng.integers(0, 256, (4, 3072), dtype=np.uint8) for name in CIFAR_BATCHES}
    images["test_batch"] = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    return images


IMAGENET_TRAIN = tuple(f"Imagenet64_train_npz/train_data_batch_{i}.npz" for i in range(1, 11))
IMAGENET_VAL = "Imagenet64_val_npz/val_data.npz"


def write_imagenet64(root: Path, per_file: int = 2, n_val: int = 3) -> dict[str, np.ndarray]:
    """The downsampled-ImageNet npz layout; returns {relative name: data array}."""
    rng = np.random.default_rng(99)
    arrays = {}
    for name in (*IMAGENET_TRAIN, IMAGENET_VAL):
        n = n_val if name == IMAGENET_VAL else per_file
        data = rng.integers(0, 256, (n, 12288), dtype=np.uint8)
        fields = {"data": data, "labels": rng.integers(1, 1001, n).tolist()}
        if name != IMAGENET_VAL:
            fields["mean"] = data.mean(axis=0)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        np.savez(root / name, **fields)
        arrays[name] = data
    return arrays


@pytest.fixture
def make_enwik8_zip():
    return write_enwik8_zip


@pytest.fixture
def make_cifar_tar():
    return write_cifar_tar


@pytest.fixture
def make_imagenet64():
    return write_imagenet64
