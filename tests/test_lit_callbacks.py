"""Memory callbacks (inactive on CPU, the fit check's search, the OOM advice) and the NaN guard
(a non-finite loss stops the run and the last good checkpoint survives)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from reformer_lab.lit import ReformerLitModule
from reformer_lab.lit.callbacks import (
    FitCheck,
    MemoryBudget,
    MemoryBudgetExceeded,
    NonFiniteLossError,
    PeakMemoryLogger,
    StopOnNonFiniteLoss,
    oom_advice,
)
from reformer_lab.model import ReformerConfig
from tests.conftest import TINY, compose_train

TINY_MODEL = ReformerConfig(vocab_size=8, dim=32, depth=1, heads=2, max_seq_len=32, bucket_size=16)


def test_memory_callbacks_say_they_are_inactive_on_cpu(caplog) -> None:
    tokens = torch.randint(0, 8, (4, 32))
    loader = DataLoader([{"inputs": tokens, "targets": tokens}], batch_size=None)
    module = ReformerLitModule(TINY_MODEL, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    callbacks = [MemoryBudget(4), FitCheck(), PeakMemoryLogger(every_n_steps=1)]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with caplog.at_level(logging.INFO, logger="reformer_lab"):
        trainer.fit(module, loader)
    messages = [r.getMessage() for r in caplog.records]
    for name in ("MemoryBudget", "FitCheck", "PeakMemoryLogger"):
        assert f"{name} inactive: the run is not on a CUDA GPU" in messages
    assert "mem/peak_allocated_gb" not in trainer.callback_metrics
    assert callbacks[0].fraction is None and callbacks[1].report is None


def test_memory_budget_rejects_a_non_positive_budget() -> None:
    with pytest.raises(ValueError, match="memory_budget_gb=0 must be positive, or null"):
        MemoryBudget(0)


def test_oom_advice_names_what_to_change() -> None:
    advice = oom_advice(4)
    for key in (
        "memory_budget_gb=4",
        "data.batch_size",
        "trainer.accumulate_grad_batches",
        "model.ff_chunks",
        "model.n_hashes",
    ):
        assert key in advice
    assert "the GPU's memory" in oom_advice(None)


class FakeMemory:
    """A step 'fits' iff batch <= limit; records the batch sizes tried."""

    def __init__(self, limit: int) -> None:
        self.limit, self.tried = limit, []

    def __call__(self, trainer, pl_module, device, batch_size, seq_len):
        self.tried.append(batch_size)
        return batch_size * 1000 if batch_size <= self.limit else None


@pytest.mark.parametrize(
    ("limit", "configured", "cap"), [(37, 8, 1024), (5000, 8, 100), (8, 8, 64)]
)
def test_fit_check_finds_the_largest_micro_batch(monkeypatch, limit, configured, cap) -> None:
    fake = FakeMemory(limit)
    monkeypatch.setattr(FitCheck, "_peak_bytes", staticmethod(fake))
    check = FitCheck(max_batch_size=cap)
    module = ReformerLitModule(TINY_MODEL)
    report = check.check(None, module, torch.device("cpu"), configured, 32)
    assert report.largest_batch == min(limit, cap)
    assert report.peak_gb == pytest.approx(configured * 1000 / 1024**3)
    assert len(fake.tried) <= 2 * cap.bit_length() + 2  # doubling then bisection, not a scan


def test_fit_check_stops_a_batch_that_does_not_fit_and_names_the_one_that_does(monkeypatch) -> None:
    monkeypatch.setattr(FitCheck, "_peak_bytes", staticmethod(FakeMemory(limit=3)))
    module = ReformerLitModule(TINY_MODEL)
    step_before = {k: v.clone() for k, v in module.named_buffers()}
    with pytest.raises(MemoryBudgetExceeded) as error:
        FitCheck().check(None, module, torch.device("cpu"), 16, 32)
    message = str(error.value)
    assert "data.batch_size=16" in message and "data.batch_size=3" in message
    assert "trainer.accumulate_grad_batches=6" in message  # ceil(16 / 3) keeps the global batch
    for name, value in module.named_buffers():  # the LSH step counter is restored
        assert torch.equal(value, step_before[name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_check_on_a_gpu_reports_peak_memory() -> None:  # pragma: no cover - GPU only
    from reformer_lab.data import DuplicationDataModule

    module = ReformerLitModule(TINY_MODEL, optimizer=lambda p: torch.optim.Adam(p, 1e-3))
    data = DuplicationDataModule(vocab_size=8, w_len=15, batch_size=4, n_train=8, n_val=4, n_test=4)
    check, peaks = FitCheck(max_batch_size=64), PeakMemoryLogger(every_n_steps=1)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        max_steps=2,
        logger=False,
        callbacks=[MemoryBudget(4), check, peaks],
        enable_checkpointing=False,
    )
    trainer.fit(module, data)
    assert check.report is not None and check.report.peak_gb > 0
    assert check.report.largest_batch == 64  # a tiny model: every trial fits
    assert trainer.callback_metrics["mem/peak_allocated_gb"] > 0


class PoisonWeightsAtStep(Callback):
    """Sets every weight to NaN before training step `step`, so that step's loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    from reformer_lab.cli.run import run_recorded
    from reformer_lab.cli.train import train

    poison = "+callbacks.poison={_target_: tests.test_lit_callbacks.PoisonWeightsAtStep, step: 6}"
    cfg = compose_train([*TINY, "trainer.max_steps=12", poison], output_dir=tmp_path)
    with pytest.raises(SystemExit, match="training loss became nan at step 6"):
        run_recorded(cfg, train, program="reformer-train")

    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 4  # the end of epoch 1: the last validation
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    outcome = json.loads((tmp_path / "result.json").read_text())
    assert outcome["status"] == "failed"
    assert "the run stopped before this step changed any weight" in outcome["reason"]
    assert f"resume with ckpt_path={last}" in outcome["reason"]


def test_nan_guard_raises_before_backward_only_for_non_finite_losses() -> None:
    guard = StopOnNonFiniteLoss()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    guard.on_before_backward(trainer, None, torch.tensor(3.0))  # finite: nothing happens
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet"):
            guard.on_before_backward(trainer, None, torch.tensor(bad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_memory_budget_stops_a_run_that_would_not_fit_on_a_big_gpu() -> None:  # pragma: no cover
    """A 0.1 GB budget on an 80 GB card: the fit check's step at batch 32 x 4096 exceeds it and
    the run stops before training with the keys to change; without the cap it fits."""
    from reformer_lab.data import DuplicationDataModule

    cfg = ReformerConfig(vocab_size=8, dim=128, depth=2, heads=4, max_seq_len=4096,
                         bucket_size=64, n_hashes=2, axial_shape=(64, 64))  # fmt: skip

    def run(budget_gb: float | None) -> FitCheck:
        module = ReformerLitModule(cfg, optimizer=lambda p: torch.optim.Adam(p, 1e-3))
        data = DuplicationDataModule(vocab_size=8, w_len=2047, batch_size=32, n_train=64,
                                     n_val=4, n_test=4)  # fmt: skip
        check = FitCheck(search=False)
        trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=1, logger=False,
                             callbacks=[MemoryBudget(budget_gb), check],
                             enable_checkpointing=False, limit_val_batches=0)  # fmt: skip
        trainer.fit(module, data)
        return check

    try:
        with pytest.raises(MemoryBudgetExceeded, match=r"data\.batch_size"):
            run(0.1)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert run(None).report.peak_gb > 0.1  # the same step does need more than the budget
