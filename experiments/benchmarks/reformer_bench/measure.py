"""One run, in this process: build one implementation, time its training step, read its memory.

The step is forward + loss + backward of a causal LM on one sequence (batch 1) under bf16
autocast, with the gradients dropped (`zero_grad(set_to_none=True)`) before each step and no
optimizer. One warm-up step first (allocator growth, kernel selection and compilation stay out
of the numbers), then `torch.cuda.reset_peak_memory_stats()`, then at least `min_steps` timed
steps, each between two CUDA events; the result is their median. Peak memory is
`torch.cuda.max_memory_allocated()` over the timed steps (weights, gradients and activations;
not the allocator's cached-but-free blocks), in GB = 1e9 bytes; for a step captured in a CUDA
graph (reformer-lab-graph), over the warm-up (eager step and capture) and the timed steps. On the CPU (the test mode)
steps are timed with `time.perf_counter` and memory is not measured (peak_gb is null).

Timed steps continue until `target_s` of timed work or `max_steps`; a step that would end past
the run's deadline is not started, and fewer than `min_steps` steps is recorded as "timeout".
`progress` (phase, phase start, steps so far) is filled as the run goes, for the watchdog
that reports a step still running at the deadline (see `watchdog.py`). The parts every
measured run shares (warm-up, timed steps, failures as statuses) are in `timing.py`.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from .impls import BUILDERS, Built
from .settings import INJECTABLE, SIZES
from .timing import enter, measure_guarded, timed_steps, warm_up


@dataclass
class RunSpec:
    impl: str
    config: str
    seq: int
    device: str = "cuda"
    min_steps: int = 3
    max_steps: int = 10
    target_s: float = 2.0
    deadline_unix: float = float("inf")
    inject: str | None = None


def run_one(spec: RunSpec, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure one run; never raises for the model's failures (they become the status).

    The result is built in `progress` (a new dict if None), so another thread can read it.
    """
    result = progress if progress is not None else {}
    return measure_guarded(result, spec.device, lambda: _measure(spec, result))


def _measure(spec: RunSpec, result: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(spec.device)
    torch.manual_seed(0)
    built = BUILDERS[spec.impl](SIZES[spec.config], spec.seq)
    result.update(impl_version=built.version, settings=built.settings,
                  n_params=sum(p.numel() for p in built.model.parameters()))  # fmt: skip
    built.model.to(device).train()
    generator = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, SIZES[spec.config].vocab_size, (1, spec.seq + 1),
                           generator=generator).to(device)  # (1, seq + 1) random bytes  # fmt: skip
    _inject(spec.inject, built)

    def step() -> torch.Tensor:
        return _training_step(built, tokens, device.type)

    warmup_s = warm_up(step, device, result, peak_from_warm_up=built.step is not None)
    if device.type == "cuda":
        result["static_gb"] = torch.cuda.memory_allocated(device) / 1e9

    result["step_ms_all"] = []  # filled in place, step by step
    step_s = timed_steps(step, device, spec, warmup_s, result)
    enter(result, "done")
    if len(step_s) < spec.min_steps:
        return {
            "status": "timeout",
            "message": (
                f"only {len(step_s)} of {spec.min_steps} timed steps fit before the run's deadline "
                f"(warm-up {warmup_s:.1f} s, steps {', '.join(f'{s:.1f}' for s in step_s) or 'none'} s)"
            ),
        }
    median_s = statistics.median(step_s)
    peak_gb = None
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated(device) / 1e9
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
    return {"status": "ok", "message": None, "n_steps": len(step_s), "step_ms": 1e3 * median_s,
            "tok_per_s": spec.seq / median_s, "peak_gb": peak_gb}  # fmt: skip


def _training_step(built: Built, tokens: torch.Tensor, device_type: str) -> torch.Tensor:
    """Drop the gradients, forward + loss under bf16 autocast, backward; returns the loss.
    (An implementation with its own `step` runs that instead: a captured graph overwrites its
    gradients in place.)"""
    if built.step is not None:
        return built.step(tokens).detach().clone()
    built.model.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        loss = built.loss(tokens)  # scalar
    loss.backward()
    return loss.detach()


def _inject(kind: str | None, built: Built) -> None:
    """Make this run fail in the way a test asks for (see settings.INJECTABLE)."""
    if kind is None or kind == "hang":  # "hang" froze the process as it started (run.py one)
        return
    if kind == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory (injected by --inject for a test)")
    if kind == "error":
        raise ValueError("injected error (--inject for a test)")
    if kind == "crash":
        os._exit(3)
    if kind == "slow":  # the warm-up step never ends: the watchdog reports it
        built.loss = lambda tokens: time.sleep(3600)  # type: ignore[assignment,return-value]
        return
    raise ValueError(f"unknown injected failure {kind!r}; choose from {INJECTABLE}")
