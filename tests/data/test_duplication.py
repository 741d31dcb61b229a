"""Duplication task (paper sec 2.1): 0 w 0 w, loss only on the second copy of w."""

from __future__ import annotations

import re

import pytest
import torch

from reformer_lab.data import DataError, DuplicationDataModule
from reformer_lab.data.base import IGNORE_INDEX


def first_batch(loader) -> dict[str, torch.Tensor]:
    return next(iter(loader))


def make(**kwargs) -> DuplicationDataModule:
    args = {"vocab_size": 16, "w_len": 7, "n_train": 8, "n_val": 6, "n_test": 6, "batch_size": 4}
    dm = DuplicationDataModule(**{**args, **kwargs})
    dm.setup("fit")
    return dm


def test_paper_defaults_give_length_1024():
    dm = DuplicationDataModule(batch_size=2)
    dm.setup()
    batch = first_batch(dm.val_dataloader())
    assert dm.seq_len == 1024 and dm.vocab_size == 128 and dm.metric == "accuracy"
    assert dm.axial_shape is None
    assert batch["inputs"].shape == (2, 1024) and batch["inputs"].dtype == torch.int64
    assert batch["targets"].shape == (2, 1024) and batch["targets"].dtype == torch.int64


def test_sequences_are_0_w_0_w_with_symbols_from_1_to_vocab_minus_1():
    dm = make(vocab_size=4, w_len=50, n_val=20)
    for example in (dm.val_set[i] for i in range(20)):
        seq = example["inputs"]  # (2 * (w_len + 1),)
        assert seq.shape == (102,)
        assert seq[0] == 0 and seq[51] == 0
        assert torch.equal(seq[1:51], seq[52:102])
        assert set(seq[1:51].tolist()) <= {1, 2, 3}
    symbols = torch.cat([dm.val_set[i]["inputs"][1:51] for i in range(20)])
    assert set(symbols.tolist()) == {1, 2, 3}  # the whole range 1..vocab-1 is drawn


def test_targets_only_on_the_second_copy_of_w():
    w_len = 7
    dm = make(w_len=w_len)
    batch = first_batch(dm.train_dataloader())
    for inputs, targets in zip(batch["inputs"], batch["targets"]):
        counted = (targets != IGNORE_INDEX).nonzero().flatten()
        assert counted.tolist() == list(range(w_len + 1, 2 * w_len + 1))  # exactly w_len targets
        word = inputs[1 : w_len + 1]
        assert torch.equal(targets[counted], word)
        # Brute force: each counted position predicts the next input token.
        for t in counted.tolist():
            assert targets[t] == inputs[t + 1]


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        batch_a = first_batch(getattr(a, loader)())
        assert torch.equal(batch_a["inputs"], first_batch(getattr(b, loader)())["inputs"])
        assert not torch.equal(batch_a["inputs"], first_batch(getattr(c, loader)())["inputs"])


def test_train_val_test_draw_from_different_streams():
    dm = make()
    train = first_batch(dm.train_dataloader())["inputs"]
    val = first_batch(dm.val_dataloader())["inputs"]
    test = first_batch(dm.test_dataloader())["inputs"]
    assert (
        not torch.equal(train, val) and not torch.equal(val, test) and not torch.equal(train, test)
    )


def test_each_training_epoch_draws_fresh_sequences_reproducibly():
    dm = make()
    loader = dm.train_dataloader()
    epoch0 = torch.cat([b["inputs"] for b in loader])
    assert epoch0.shape == (8, 16)  # n_train sequences per epoch
    loader.sampler.set_epoch(1)
    epoch1 = torch.cat([b["inputs"] for b in loader])
    loader.sampler.set_epoch(0)
    again = torch.cat([b["inputs"] for b in loader])
    assert not torch.equal(epoch0, epoch1)
    assert torch.equal(epoch0, again)


def test_val_set_is_fixed_across_calls():
    dm = make()
    assert torch.equal(dm.val_set[5]["inputs"], dm.val_set[5]["inputs"])
    assert len(dm.val_set) == 6 and len(dm.test_set) == 6


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"w_len": 0}, "data.w_len"),
        ({"vocab_size": 1}, "data.vocab_size"),
        ({"n_val": 0}, "data.n_val"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"seed": 1.5}, "data.seed"),
        ({"batch_size": True}, "data.batch_size"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_key(kwargs, key):
    with pytest.raises(DataError, match=re.escape(key)):
        DuplicationDataModule(**kwargs)
