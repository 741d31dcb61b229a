"""Every cell in its own subprocess (`run.py one`), results appended to the records file as they end.

As in the benchmark's matrix (`reformer_bench.matrix`), whose runner it uses
(`reformer_bench.child`): a fresh process per cell gives each a fresh CUDA context and
allocator, and a crash or hang costs one cell. A cell has a deadline
(its watchdog reports the phase still running then; a frozen process is killed `grace_s`
later), and a total time budget bounds the sweep: cells it leaves out are "skipped", and every
finished cell is already on disk (and mirrored, e.g. into the device's $OUT).

Unlike the matrix, only an out-of-memory stops an implementation's longer lengths: at a fixed
number of tokens per step the LSH step time does not grow with the length, so a timeout (say,
Triton compiling on a fresh machine) says nothing about the next length.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reformer_bench.child import run_child
from reformer_bench.records import append_record, read_records, utc_now

from .cells import Cell

RunCell = Callable[[Cell, float], dict[str, Any]]
"""(cell, deadline_unix) -> the cell's result fields."""


@dataclass
class SweepOptions:
    cells: list[Cell]
    size: str
    config: str
    """The records' `config` (see cells.config_label)."""
    total_tokens: int
    device: str
    out: Path
    gpu: str
    command: str
    run_script: Path
    budget_s: float = 290.0
    cell_timeout_s: float = 60.0
    grace_s: float = 5.0
    min_cell_s: float = 15.0
    """A cell is not started with less budget than this left."""
    min_steps: int = 3
    target_s: float = 1.0
    mirror_dir: Path | None = None
    git_commit: str | None = None


def run_sweep(
    options: SweepOptions, log: Callable[[str], None] = print, run_cell: RunCell | None = None
) -> list[dict[str, Any]]:
    """Run every cell (in a subprocess unless `run_cell` is given); returns the new records."""
    run_cell = run_cell or (lambda cell, deadline: _run_child(options, cell, deadline))
    records = read_records(options.out) if options.out.exists() else []
    new: list[dict[str, Any]] = []
    started = time.monotonic()
    budget_end = time.time() + options.budget_s
    stopped: dict[str, str] = {}  # impl -> why its longer lengths are skipped

    for cell in options.cells:
        base = _base_record(options, cell)
        reason = stopped.get(cell.impl)
        now = time.time()
        if reason is None and budget_end - now < options.min_cell_s:
            reason = f"the total time budget of {options.budget_s:.0f} s was spent"
        if reason is not None:
            record = {**base, "status": "skipped", "message": reason, "timestamp": utc_now()}
        else:
            cut_by_budget = budget_end < now + options.cell_timeout_s
            deadline = min(now + options.cell_timeout_s, budget_end)
            record = {**base, **run_cell(cell, deadline), "timestamp": utc_now()}
            if record["status"] == "timeout":
                record["cut_by_budget"] = cut_by_budget
            if record["status"] == "oom":  # longer sequences need more memory, never less
                stopped[cell.impl] = f"after oom at length {cell.seq}"
        new.append(record)
        append_record(records, record, options.out, options.mirror_dir)
        log(f"[{time.monotonic() - started:5.0f}s] {summary(record)}")
    return new


def _base_record(options: SweepOptions, cell: Cell) -> dict[str, Any]:
    return {
        "impl": cell.impl, "config": options.config, "size": options.size, "seq": cell.seq,
        "batch": cell.batch, "total_tokens": options.total_tokens, "precision": "bf16 autocast",
        "step": "forward + loss + backward + Adam step", "device": options.device,
        "gpu": options.gpu, "command": options.command, "git_commit": options.git_commit,
        "torch": None, "impl_version": None, "peak_gb": None, "tok_per_s": None,
        "step_ms": None, "seconds_per_step": None, "message": None,
    }  # fmt: skip


def child_command(options: SweepOptions, cell: Cell, deadline_unix: float) -> list[str]:
    return [
        sys.executable, str(options.run_script), "one", "--impl", cell.impl,
        "--size", options.size, "--seq", str(cell.seq), "--batch", str(cell.batch),
        "--device", options.device, "--min-steps", str(options.min_steps),
        "--target-s", str(options.target_s), "--deadline-unix", f"{deadline_unix:.3f}",
    ]  # fmt: skip


def _run_child(options: SweepOptions, cell: Cell, deadline_unix: float) -> dict[str, Any]:
    """One cell in a subprocess: its result, or a timeout/error record if it gave none."""
    limit_s = max(0.0, deadline_unix - time.time()) + options.grace_s
    outcome = run_child(child_command(options, cell, deadline_unix), limit_s)
    result = outcome.result
    if result is None:  # frozen: killed at the limit
        result = {"status": "timeout",
                  "message": f"killed after {limit_s:.0f} s (the cell's deadline + "
                             f"{options.grace_s:.0f} s grace): the process was frozen"}  # fmt: skip
    return {**result, **outcome.provenance()}


def summary(record: dict[str, Any]) -> str:
    head = f"{record['impl']:<15} {record['seq']:>6} x {record['batch']:<3} {record['status']:<8}"
    if record["status"] != "ok":
        return f"{head} {(record['message'] or '').strip().splitlines()[-1][:160]}"
    peak = "" if record["peak_gb"] is None else f"{record['peak_gb']:7.2f} GB "
    return (
        f"{head}{peak}{record['seconds_per_step']:9.4f} s/step {record['tok_per_s']:>12,.0f} tok/s"
    )
