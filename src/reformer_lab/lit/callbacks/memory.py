"""GPU memory: a per-process budget and peak-memory logging.

The Reformer's point is memory (sec 3-4 of the paper: reversible layers and chunking make
activation memory independent of depth). `MemoryBudget` caps this process at
`budget_gb`, so a run that would not fit a 4 GB card fails on a big card too, and
`PeakMemoryLogger` records what a run really used. Both log that they are inactive on CPU.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)
info = rank_zero_only(log.info)  # once per run, not once per DDP rank
GIB = 1024**3


def oom_advice(budget_gb: float | None) -> str:
    """What to change when a run runs out of GPU memory; shared by the callbacks and the CLI."""
    cap = (
        f"the memory budget memory_budget_gb={budget_gb:g}"
        if budget_gb is not None
        else "the GPU's memory"
    )
    return (
        f"out of GPU memory under {cap}. Lower data.batch_size (keep the global batch with "
        f"trainer.accumulate_grad_batches), shorten the sequence, raise model.ff_chunks, lower "
        f"model.n_hashes or model.bucket_size, or raise memory_budget_gb (null = the whole card)"
    )


def cuda_device(trainer: pl.Trainer) -> torch.device | None:
    """This rank's CUDA device, or None when the run is not on a GPU."""
    device = trainer.strategy.root_device
    return device if device.type == "cuda" else None


class MemoryBudget(Callback):
    """Caps this process's CUDA caching allocator at `budget_gb` (None: no cap).

    `torch.cuda.set_per_process_memory_fraction` counts the allocator's memory, not the CUDA
    context (a few hundred MB), so a real 4 GB card holds a little less than budget 4.
    """

    def __init__(self, budget_gb: float | None = 4.0) -> None:
        if budget_gb is not None and budget_gb <= 0:
            raise ValueError(f"memory_budget_gb={budget_gb} must be positive, or null for no cap")
        self.budget_gb = budget_gb
        self.fraction: float | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        device = cuda_device(trainer)
        if device is None:
            info("MemoryBudget inactive: the run is not on a CUDA GPU")
            return
        if self.budget_gb is None:
            info("MemoryBudget: no cap (memory_budget_gb=null)")
            return
        total = torch.cuda.get_device_properties(device).total_memory
        self.fraction = min(1.0, self.budget_gb * GIB / total)
        torch.cuda.set_per_process_memory_fraction(self.fraction, device)
        info(
            f"MemoryBudget: capped at {self.budget_gb:g} GB = {self.fraction:.3f} of "
            f"{total / GIB:.1f} GB on {device} (memory_budget_gb=null lifts the cap)"
        )

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, torch.cuda.OutOfMemoryError):
            log.error(oom_advice(self.budget_gb))


class PeakMemoryLogger(Callback):
    """Logs mem/peak_allocated_gb and mem/peak_reserved_gb (peaks since training started)."""

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self.active = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = cuda_device(trainer)
        self.active = device is not None
        if not self.active:
            info("PeakMemoryLogger inactive: the run is not on a CUDA GPU")
            return
        torch.cuda.reset_peak_memory_stats(device)  # exclude the fit check's trial batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[override]
        if self.active and trainer.global_step % self.every_n_steps == 0:
            pl_module.log_dict(self.peaks(cuda_device(trainer)), on_step=True, on_epoch=False)

    @staticmethod
    def peaks(device: torch.device | None) -> dict[str, float]:
        return {
            "mem/peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GIB,
            "mem/peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GIB,
        }
