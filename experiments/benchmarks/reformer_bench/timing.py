"""What every measured run does around its own training step: phases, the warm-up step, the
timed steps, and failures turned into a status (used by `measure` and by the speed-vs-length
study in experiments/speed_vs_length).

One warm-up step first (allocator growth, kernel selection and compilation stay out of the
numbers), then `torch.cuda.reset_peak_memory_stats()`, then timed steps, each between two CUDA
events (`time.perf_counter` on the CPU), until `target_s` of timed work or `max_steps`, at
least `min_steps`; a step that would end past the deadline is not started. The phase the run
is in (`enter`) is written into its result as it goes, for the watchdog (`watchdog.py`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import torch

OUT_OF_MEMORY_MARKS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation")

Step = Callable[[], torch.Tensor]
"""One training step; returns its loss (a scalar)."""


class StepLimits(Protocol):
    """How many steps to time, for how long, until when (a `RunSpec` or a study's own)."""

    min_steps: int
    max_steps: int
    target_s: float
    deadline_unix: float


def measure_guarded(
    result: dict[str, Any], device: str, measure: Callable[[], dict[str, Any]], **first: Any
) -> dict[str, Any]:
    """Fill `result` with `measure()`'s fields; its failures become the status, never raise.

    `first` are fields recorded before anything runs (after the torch and CUDA versions).
    """
    result.update(torch=torch.__version__, cuda=torch.version.cuda, **first)
    enter(result, "build")
    try:
        result["gpu"] = device_name(device)
        result.update(measure())
    except torch.OutOfMemoryError as error:
        result.update(status="oom", message=first_line(error))
    except RuntimeError as error:  # allocation failures that are not torch.OutOfMemoryError
        out_of_memory = any(mark in str(error) for mark in OUT_OF_MEMORY_MARKS)
        result.update(status="oom" if out_of_memory else "error",
                      message=first_line(error) if out_of_memory else traceback_tail())  # fmt: skip
    except Exception:
        result.update(status="error", message=traceback_tail())
    result.pop("phase_started_unix", None)
    return result


def warm_up(
    step: Step, device: torch.device, result: dict[str, Any], peak_from_warm_up: bool = False
) -> float:
    """Run the warm-up step, check its loss, reset the peak memory; returns its seconds.

    peak_from_warm_up: reset the peak before the warm-up instead, for a step whose warm-up
    allocates what the timed steps then use without the allocator seeing it (a CUDA graph's
    capture)."""
    enter(result, "warm-up")
    if peak_from_warm_up and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    loss = step()
    synchronize(device)
    warmup_s = time.perf_counter() - started
    if not torch.isfinite(loss):
        raise RuntimeError(f"the warm-up loss is {loss.item()}: the step is not valid")
    result["warmup_ms"] = 1e3 * warmup_s
    if device.type == "cuda" and not peak_from_warm_up:
        torch.cuda.reset_peak_memory_stats(device)
    return warmup_s


def timed_steps(
    step: Step,
    device: torch.device,
    limits: StepLimits,
    estimate_s: float,
    result: dict[str, Any],
) -> list[float]:
    """Seconds of each timed step; stops at the deadline, after target_s, or at max_steps.

    Each step's milliseconds are also appended to `result["step_ms_all"]` as it ends.
    """
    seconds: list[float] = []
    while len(seconds) < limits.max_steps:
        if len(seconds) >= limits.min_steps and sum(seconds) >= limits.target_s:
            break
        if time.time() + estimate_s > limits.deadline_unix:
            break
        enter(result, f"timed step {len(seconds) + 1}")
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - started)
        result["step_ms_all"].append(1e3 * seconds[-1])
        estimate_s = seconds[-1]
    return seconds


def enter(result: dict[str, Any], phase: str) -> None:
    """Record that the run is now in `phase` (the watchdog reports it at the deadline)."""
    result["phase"], result["phase_started_unix"] = phase, time.time()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0][:400]}"


def traceback_tail(lines: int = 8) -> str:
    return "\n".join(traceback.format_exc().strip().splitlines()[-lines:])[-2000:]
