"""Enwik8DataModule on a 2,000-byte stand-in zip (same format: one member named `enwik8`)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from reformer_lab.data import DataError, Enwik8DataModule
from reformer_lab.data.base import IGNORE_INDEX
from reformer_lab.data.enwik8 import ENWIK8_URL

N = 2000
SEQ_LEN = 16


def stand_in_bytes() -> bytes:
    """Train bytes in 0..99, val in 100..177, test in 178..255: a leak between splits shows."""
    rng = np.random.default_rng(7)
    parts = [rng.integers(0, 100, 1800), rng.integers(100, 178, 100), rng.integers(178, 256, 100)]
    return np.concatenate(parts).astype(np.uint8).tobytes()


PAYLOAD = stand_in_bytes()
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def make(path, **kwargs) -> Enwik8DataModule:
    args = {
        "path": str(path),
        "download": False,
        "expected_size": N,
        "expected_md5": PAYLOAD_MD5,
        "seq_len": SEQ_LEN,
        "batch_size": 4,
    }
    return Enwik8DataModule(**{**args, **kwargs})


def ready(path, **kwargs) -> Enwik8DataModule:
    dm = make(path, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def targets_of(dataset) -> torch.Tensor:
    """All counted targets of a val/test set, in order."""
    targets = torch.cat([dataset[i]["targets"] for i in range(len(dataset))])
    return targets[targets != IGNORE_INDEX]


@pytest.fixture
def zip_path(tmp_path, make_enwik8_zip):
    return make_enwik8_zip(tmp_path / "dl" / "enwik8.zip", PAYLOAD)


def test_zip_is_extracted_next_to_it_and_split_90_5_5(zip_path):
    dm = ready(zip_path)
    assert (zip_path.parent / "enwik8").read_bytes() == PAYLOAD
    assert not (zip_path.parent / "enwik8.part").exists()
    data = torch.frombuffer(bytearray(PAYLOAD), dtype=torch.uint8).long()
    assert torch.equal(dm.train_set.data.long(), data[:1800])
    assert torch.equal(targets_of(dm.val_set), data[1800:1900])
    assert torch.equal(targets_of(dm.test_set), data[1900:2000])
    assert (dm.vocab_size, dm.seq_len, dm.metric, dm.axial_shape) == (
        256,
        16,
        "bits_per_char",
        None,
    )


def test_folder_with_zip_and_raw_file_paths_work(zip_path):
    ready(zip_path.parent)  # folder holding enwik8.zip -> extracts <folder>/enwik8
    raw = zip_path.parent / "enwik8"
    zip_path.unlink()
    assert torch.equal(targets_of(ready(raw).val_set), targets_of(ready(raw.parent).val_set))


def test_wrong_size_with_the_real_default_is_rejected_and_nothing_is_left(zip_path):
    dm = make(zip_path, expected_size=100_000_000, expected_md5=None)
    with pytest.raises(DataError, match="has 2,000 bytes, expected exactly 100,000,000"):
        dm.prepare_data()
    assert not (zip_path.parent / "enwik8").exists()  # checked before the rename
    assert Enwik8DataModule(batch_size=1).expected_size == 100_000_000


def test_md5_mismatch_is_rejected(zip_path):
    with pytest.raises(DataError, match="md5"):
        make(zip_path, expected_md5="f" * 32).prepare_data()


def test_truncated_raw_file_is_rejected_in_setup(tmp_path):
    raw = tmp_path / "enwik8"
    raw.write_bytes(PAYLOAD[:-1])
    dm = make(raw)
    with pytest.raises(DataError, match="1,999 bytes, expected exactly 2,000"):
        dm.setup()


def test_missing_path_with_download_disabled_names_url_and_config_key(tmp_path):
    dm = make(tmp_path / "absent")
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert ENWIK8_URL in message and "data.path=" in message and "data.download=false" in message


def test_download_fetches_zip_into_missing_folder(zip_path, tmp_path):
    target = tmp_path / "fresh"
    dm = ready(target, download=True, url=zip_path.as_uri())
    assert (target / "enwik8.zip").read_bytes() == zip_path.read_bytes()
    assert (target / "enwik8").read_bytes() == PAYLOAD
    assert len(dm.test_set) == math.ceil(100 / SEQ_LEN)


def test_corrupt_zip_and_zip_without_enwik8_are_rejected(tmp_path, make_enwik8_zip):
    good = make_enwik8_zip(tmp_path / "a" / "enwik8.zip", PAYLOAD)
    cut = tmp_path / "b" / "enwik8.zip"
    cut.parent.mkdir()
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(DataError, match="not a complete zip"):
        make(cut).prepare_data()
    other = make_enwik8_zip(tmp_path / "c" / "enwik8.zip", PAYLOAD, member="enwik9")
    with pytest.raises(DataError, match="'enwik8'"):
        make(other).prepare_data()
