"""Byte-level windows: tiling val/test windows, seeded train crops, shift-by-one targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reformer_lab.data import TextFileDataModule
from reformer_lab.data.base import IGNORE_INDEX
from reformer_lab.data.bytes_text import split_bounds

SEQ_LEN = 16


@pytest.fixture
def corpus(tmp_path):
    """1,000 bytes: train [0, 900) in 0..99, val and test (50 each) in 100..255."""
    rng = np.random.default_rng(3)
    data = np.concatenate([rng.integers(0, 100, 900), rng.integers(100, 256, 100)]).astype(np.uint8)
    path = tmp_path / "corpus.txt"
    path.write_bytes(data.tobytes())
    return path, torch.from_numpy(data).long()


def ready(path, **kwargs) -> TextFileDataModule:
    dm = TextFileDataModule(**{"path": str(path), "seq_len": SEQ_LEN, "batch_size": 4, **kwargs})
    dm.prepare_data()
    dm.setup()
    return dm


def test_split_bounds_are_exact_for_enwik8_sizes():
    assert split_bounds(100_000_000, (0.9, 0.05, 0.05)) == (90_000_000, 95_000_000)
    assert split_bounds(1000, (0.9, 0.05, 0.05)) == (900, 950)
    assert split_bounds(400, (0.5, 0.25, 0.25)) == (200, 300)


def test_val_and_test_windows_tile_their_split_without_overlap(corpus):
    path, data = corpus
    dm = ready(path)
    for dataset, first, end in ((dm.val_set, 900, 950), (dm.test_set, 950, 1000)):
        assert len(dataset) == math.ceil((end - first) / SEQ_LEN)
        covered = []
        for k in range(len(dataset)):
            inputs, targets = dataset[k]["inputs"], dataset[k]["targets"]
            counted = (targets != IGNORE_INDEX).nonzero().flatten()
            n = len(counted)
            assert counted.tolist() == list(range(n))  # padding only at the end
            t0 = first + k * SEQ_LEN
            covered.extend(range(t0, t0 + n))
            assert torch.equal(targets[:n], data[t0 : t0 + n])
            assert torch.equal(
                inputs[:n], data[t0 - 1 : t0 - 1 + n]
            )  # targets = inputs shifted by one
            assert torch.equal(inputs[n:], torch.zeros(SEQ_LEN - n, dtype=torch.long))
        assert covered == list(range(first, end))  # every byte once, in order


def test_train_crops_are_windows_of_the_train_split_shifted_by_one(corpus):
    path, data = corpus
    dm = ready(path)
    train_bytes = data[:900].tolist()
    starts = []
    for i in range(200):
        example = dm.train_set[i]
        assert torch.equal(example["inputs"][1:], example["targets"][:-1])
        window = [*example["inputs"].tolist(), example["targets"][-1].item()]
        # Brute force: the window is a substring of the train bytes (val/test bytes are >= 100).
        matches = [s for s in range(900 - SEQ_LEN) if train_bytes[s : s + SEQ_LEN + 1] == window]
        assert matches, f"crop {i} is not inside the train split"
        starts.append(matches[0])
    assert max(starts) > 800 and min(starts) < 100  # crops spread over the whole split


def test_train_crops_are_reproducible_per_seed_and_epoch(corpus):
    path, _ = corpus
    a, b, c = ready(path, seed=1), ready(path, seed=1), ready(path, seed=2)

    def epoch(dm, number):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(number)
        return torch.cat([batch["inputs"] for batch in loader])

    assert torch.equal(epoch(a, 0), epoch(b, 0))
    assert not torch.equal(epoch(a, 0), epoch(c, 0))
    assert not torch.equal(epoch(a, 0), epoch(a, 1))
    assert epoch(a, 0).shape == (math.ceil(900 / SEQ_LEN), SEQ_LEN)  # default: one pass of bytes
    assert len(ready(path, train_samples_per_epoch=5).train_dataloader()) == 2  # 5 in batches of 4
