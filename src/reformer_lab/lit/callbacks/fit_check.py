"""Before training: does one step at the configured (batch, length) fit, and what is the largest
micro-batch that would?

Lightning's BatchSizeFinder answers the second question but then *changes* the batch size, goes
through the data loaders (a 64K-token crop is slow to build), and refuses distributed
strategies. Here the trial batches are random tokens of the configured shape (memory depends
only on the shape), the model's buffers (the LSH step counter) are restored afterwards, and
the configured batch size is left alone: a batch that does not fit stops the run with a message
naming the largest one that does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_only

from reformer_lab.lit.callbacks.memory import GIB, cuda_device

log = logging.getLogger(__name__)
info = rank_zero_only(log.info)


class MemoryBudgetExceeded(RuntimeError):
    """One training step at the configured batch size does not fit in the memory budget."""


@dataclass
class FitReport:
    batch_size: int
    seq_len: int
    peak_gb: float
    """Peak allocated memory of one forward + backward at (batch_size, seq_len)."""
    largest_batch: int
    """Largest micro-batch that fitted (searched up to `max_batch_size`)."""
    searched_up_to: int


class FitCheck(Callback):
    """Runs one forward+backward of `batch_size x seq_len` random tokens on the GPU before fit.

    Reports the peak memory and the largest micro-batch that fits (doubling, then bisecting,
    up to `max_batch_size`). Reads `batch_size` and `seq_len` from the datamodule. Adam's
    moment buffers are allocated at the first real step, so a run needs about
    2 x (parameter memory) more than the reported peak.
    """

    def __init__(self, search: bool = True, max_batch_size: int = 1024) -> None:
        self.search = search
        self.max_batch_size = max_batch_size
        self.report: FitReport | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = cuda_device(trainer)
        if device is None:
            info("FitCheck inactive: the run is not on a CUDA GPU")
            return
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            info(f"FitCheck skipped: {type(trainer.strategy).__name__} shards the model")
            return
        datamodule = trainer.datamodule
        batch_size = getattr(datamodule, "batch_size", None)
        seq_len = getattr(datamodule, "seq_len", None)
        if batch_size is None or seq_len is None:
            info("FitCheck skipped: the datamodule has no batch_size / seq_len")
            return
        self.report = self.check(trainer, pl_module, device, batch_size, seq_len)
        info(
            f"FitCheck: one step of {batch_size} x {seq_len} tokens peaks at "
            f"{self.report.peak_gb:.2f} GB; the largest micro-batch that fits is "
            f"{self.report.largest_batch} (searched up to {self.report.searched_up_to})"
        )
        for logger in trainer.loggers:
            logger.log_metrics(
                {
                    "mem/fit_check_peak_gb": self.report.peak_gb,
                    "mem/fit_check_largest_batch": self.report.largest_batch,
                },
                step=0,
            )

    def check(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        device: torch.device,
        batch_size: int,
        seq_len: int,
    ) -> FitReport:
        buffers = {name: b.clone() for name, b in pl_module.named_buffers()}
        try:
            peak = self._peak_bytes(trainer, pl_module, device, batch_size, seq_len)
            if peak is None:
                largest = self._largest_fitting(trainer, pl_module, device, seq_len, 1, batch_size)
                raise MemoryBudgetExceeded(
                    f"one training step of data.batch_size={batch_size} x {seq_len} tokens does "
                    f"not fit in GPU memory (memory_budget_gb caps it). The largest micro-batch "
                    f"that fits is {largest}: set data.batch_size={largest} and "
                    f"trainer.accumulate_grad_batches={-(-batch_size // max(largest, 1))} to keep "
                    f"the global batch, or shorten the sequence / raise model.ff_chunks / lower "
                    f"model.n_hashes, or raise memory_budget_gb"
                )
            largest, limit = batch_size, batch_size
            if self.search:
                limit = max(batch_size, self.max_batch_size)
                largest = self._largest_fitting(
                    trainer, pl_module, device, seq_len, batch_size, limit
                )
            return FitReport(batch_size, seq_len, peak / GIB, largest, limit)
        finally:
            with torch.no_grad():
                for name, b in pl_module.named_buffers():
                    b.copy_(buffers[name])
            pl_module.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    def _largest_fitting(
        self, trainer, pl_module, device, seq_len: int, fits: int, limit: int
    ) -> int:
        """Largest b in [fits, limit] whose step fits, assuming `fits` does (0 if even 1 fails)."""
        if fits < 1 or self._peak_bytes(trainer, pl_module, device, fits, seq_len) is None:
            return 0
        fails = None
        while fails is None and fits < limit:  # doubling
            trial = min(2 * fits, limit)
            if self._peak_bytes(trainer, pl_module, device, trial, seq_len) is None:
                fails = trial
            else:
                fits = trial
        while fails is not None and fails - fits > 1:  # bisection between fits and fails
            middle = (fits + fails) // 2
            if self._peak_bytes(trainer, pl_module, device, middle, seq_len) is None:
                fails = middle
            else:
                fits = middle
        return fits

    @staticmethod
    def _peak_bytes(
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        device: torch.device,
        batch_size: int,
        seq_len: int,
    ) -> int | None:
        """Peak allocated bytes of one forward+backward, or None if it runs out of memory."""
        model = pl_module.model
        pl_module.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            tokens = torch.randint(0, model.cfg.vocab_size, (batch_size, seq_len), device=device)
            with trainer.precision_plugin.train_step_context():
                out = model.loss(tokens, tokens)  # every position counted: the worst case
            out.loss.backward()
            return torch.cuda.max_memory_allocated(device)
        except torch.cuda.OutOfMemoryError:
            return None
        finally:
            pl_module.zero_grad(set_to_none=True)
