"""Loader workers start inside a joblib (loky) worker, where Hydra's joblib launcher runs jobs."""

from __future__ import annotations

import pytest
import torch

joblib = pytest.importorskip("joblib")


def first_batch_in_this_process(num_workers: int) -> torch.Tensor:
    from reformer_lab.data import DuplicationDataModule

    dm = DuplicationDataModule(
        vocab_size=8, w_len=7, n_train=8, n_val=4, n_test=4, batch_size=2,
        num_workers=num_workers, seed=0, pin_memory=False,
    )  # fmt: skip
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))["inputs"]


@pytest.mark.slow
def test_loader_workers_start_inside_a_loky_worker() -> None:
    """Inside a loky worker the default start method is loky's, which torch's DataLoader
    cannot use (the GPU sweep failed so); the loaders name their start method. The batch
    equals the one a worker-free loader gives in this process."""
    with joblib.parallel_config(backend="loky", n_jobs=2):
        batches = joblib.Parallel()(
            joblib.delayed(first_batch_in_this_process)(1) for _ in range(2)
        )
    expected = first_batch_in_this_process(0)
    for batch in batches:
        assert torch.equal(batch, expected)
