"""One cell, measured in this process: seconds per training step of a batch (paper Fig. 5 right).

A training step is: drop the gradients, forward + next-token loss under bf16 autocast,
backward, one Adam step. Timed with the benchmark harness's `reformer_bench.timing`: one
warm-up step (allocator growth, kernel selection and Triton compilation stay out of the
numbers), then `torch.cuda.reset_peak_memory_stats()`, then timed steps between two CUDA events
(host clock on the CPU) until `target_s` of timed work or `max_steps`, at least `min_steps`; a
step that would end past the deadline is not started, and fewer than `min_steps` steps is a
"timeout". The result is their median. Failures become the status ("oom", "error"), never an
exception.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch
from reformer_bench.settings import ModelSize
from reformer_bench.timing import enter, measure_guarded, timed_steps, warm_up

from .cells import Cell, build_config

ADAM_LR = 1e-4


@dataclass
class Timing:
    """The cell's device and step limits (a `reformer_bench.timing.StepLimits`)."""

    device: str = "cuda"
    min_steps: int = 3
    max_steps: int = 10
    target_s: float = 1.0
    deadline_unix: float = float("inf")


def measure_cell(
    cell: Cell, size: ModelSize, timing: Timing, progress: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The cell's result; filled into `progress` as it goes (the watchdog reads it)."""
    result = progress if progress is not None else {}
    return measure_guarded(result, timing.device, lambda: _measure(cell, size, timing, result),
                           batch=cell.batch)  # fmt: skip


def training_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor, device_type: str
) -> torch.Tensor:
    """Forward + loss + backward + optimizer step on tokens (B, L + 1); returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        loss = model.loss(tokens[:, :-1], tokens[:, 1:]).loss  # scalar, mean over B x L
    loss.backward()
    optimizer.step()
    return loss.detach()


def _measure(cell: Cell, size: ModelSize, timing: Timing, result: dict[str, Any]) -> dict:
    import reformer_lab
    from reformer_lab.model import ReformerLM

    device = torch.device(timing.device)
    torch.manual_seed(0)
    cfg = build_config(cell.impl, size, cell.seq)
    model = ReformerLM(cfg).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=ADAM_LR)
    settings = {k: getattr(cfg, k) for k in ("attention", "shared_qk", "n_hashes", "reversible",
                                             "ff_chunks", "axial_shape", "backend")}  # fmt: skip
    result.update(impl_version=f"reformer-lab {reformer_lab.__version__}", settings=settings,
                  n_params=sum(p.numel() for p in model.parameters()))  # fmt: skip
    generator = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, size.vocab_size, (cell.batch, cell.seq + 1),
                           generator=generator).to(device)  # (B, L + 1) random bytes  # fmt: skip

    def step() -> torch.Tensor:
        return training_step(model, optimizer, tokens, device.type)

    warmup_s = warm_up(step, device, result)
    result["step_ms_all"] = []  # filled step by step
    seconds = timed_steps(step, device, timing, warmup_s, result)
    enter(result, "done")
    if len(seconds) < timing.min_steps:
        steps = ", ".join(f"{s:.2f}" for s in seconds) or "none"
        return {"status": "timeout", "message": (
            f"only {len(seconds)} of {timing.min_steps} timed steps fit before the cell's "
            f"deadline (warm-up {warmup_s:.1f} s, steps {steps} s)")}  # fmt: skip
    median_s = statistics.median(seconds)
    peak_gb = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return {"status": "ok", "message": None, "n_steps": len(seconds), "step_ms": 1e3 * median_s,
            "seconds_per_step": median_s, "tok_per_s": cell.batch * cell.seq / median_s,
            "peak_gb": peak_gb}  # fmt: skip
