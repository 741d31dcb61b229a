"""Many runs: each (impl, config, seq) in its own subprocess, results appended as they finish.

A fresh process per run gives each a fresh CUDA context and allocator, so one run's cached
blocks or fragmentation never count against the next, and a crash or hang costs one run.
Once an implementation runs out of memory or time, or fails, at some length, its longer
lengths (same config) are recorded as "skipped". A total time budget bounds the whole matrix: when it is
spent the remaining runs are "skipped", and every finished run is already on disk.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .availability import missing_reason
from .child import run_child
from .records import append_record, read_records, utc_now


@dataclass
class MatrixOptions:
    impls: list[str]
    configs: list[str]
    seqs: list[int]
    device: str
    out: Path
    gpu: str
    command: str
    run_script: Path
    budget_s: float = 480.0
    run_timeout_s: float = 60.0
    grace_s: float = 10.0
    """How long past its deadline a run's process may take to report before it is killed (its
    watchdog reports at the deadline; this only ends a process that is frozen outright)."""
    min_run_s: float = 20.0
    """A run is not started with less budget than this left."""
    min_steps: int = 3
    target_s: float = 2.0
    mirror_dir: Path | None = None
    """Also copy the results file here after every run (the device's $OUT)."""
    injections: dict[tuple[str, int], str] = field(default_factory=dict)
    git_commit: str | None = None


def plan(impls: list[str], configs: list[str], seqs: list[int]) -> list[tuple[str, str, int]]:
    """Runs in order: implementation by implementation, config by config, shortest first."""
    return [(impl, config, seq) for impl in impls for config in configs for seq in sorted(seqs)]


def run_matrix(options: MatrixOptions, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the whole plan; returns the new records (the file also keeps older ones)."""
    records = read_records(options.out) if options.out.exists() else []
    new: list[dict[str, Any]] = []
    started = time.monotonic()
    budget_end = time.time() + options.budget_s
    stopped: dict[tuple[str, str], str] = {}  # (impl, config) -> why longer lengths are skipped
    missing = {impl: missing_reason(impl) for impl in options.impls}

    for impl, config, seq in plan(options.impls, options.configs, options.seqs):
        base = _base_record(options, impl, config, seq)
        remaining = budget_end - time.time()
        reason = missing[impl] or stopped.get((impl, config))
        if reason is None and remaining < options.min_run_s:
            reason = f"the total time budget of {options.budget_s:.0f} s was spent"
        if reason is not None:
            record = {**base, "status": "skipped", "message": reason, "timestamp": utc_now()}
        else:
            record = {**base, **_run_child(options, impl, config, seq, budget_end)}
            if record["status"] in ("oom", "timeout", "error"):  # longer would fail the same way
                stopped[(impl, config)] = f"after {record['status']} at seq {seq}"
        new.append(record)
        append_record(records, record, options.out, options.mirror_dir)
        log(f"[{time.monotonic() - started:6.0f}s] {_summary(record)}")
    return new


def _base_record(options: MatrixOptions, impl: str, config: str, seq: int) -> dict[str, Any]:
    return {
        "impl": impl, "config": config, "seq": seq, "batch": 1, "precision": "bf16 autocast",
        "device": options.device, "gpu": options.gpu, "command": options.command,
        "git_commit": options.git_commit, "torch": None, "impl_version": None,
        "peak_gb": None, "tok_per_s": None, "step_ms": None, "message": None,
    }  # fmt: skip


def _run_child(
    options: MatrixOptions, impl: str, config: str, seq: int, budget_end: float
) -> dict[str, Any]:
    """One run in a subprocess: its result, or a timeout/error record if it gave none."""
    now = time.time()
    deadline = min(now + options.run_timeout_s, budget_end)
    cut_by_budget = budget_end < now + options.run_timeout_s
    command = [
        sys.executable, str(options.run_script), "one", "--impl", impl, "--config", config,
        "--seq", str(seq), "--device", options.device, "--min-steps", str(options.min_steps),
        "--target-s", str(options.target_s), "--deadline-unix", f"{deadline:.3f}",
    ]  # fmt: skip
    if (impl, seq) in options.injections:
        command += ["--inject", options.injections[(impl, seq)]]
    limit_s = deadline - now + options.grace_s
    outcome = run_child(command, limit_s)
    if outcome.result is None:  # frozen: killed at the limit
        why = "the total time budget" if cut_by_budget else "the per-run limit"
        result = {"status": "timeout",
                  "message": f"killed after {limit_s:.0f} s by {why} "
                             f"({options.run_timeout_s:.0f} s per run + {options.grace_s:.0f} s grace)"}  # fmt: skip
    else:
        result = outcome.result
    if result["status"] == "timeout":
        result["cut_by_budget"] = cut_by_budget
    return {**result, "timestamp": utc_now(), **outcome.provenance()}


def _summary(record: dict[str, Any]) -> str:
    head = f"{record['impl']:<12} {record['config']:<5} {record['seq']:>8}  {record['status']:<8}"
    if record["status"] != "ok":
        return f"{head} {(record['message'] or '').splitlines()[-1][:160]}"
    peak = "" if record["peak_gb"] is None else f"{record['peak_gb']:8.2f} GB "
    return f"{head}{peak}{record['tok_per_s']:>12,.0f} tok/s {record['step_ms']:10.1f} ms/step"
