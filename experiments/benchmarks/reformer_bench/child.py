"""One run in its own process, both sides: the child prints its result as its last stdout line
(RESULT_PREFIX + JSON), or its watchdog does at the deadline; the parent starts it, waits up to
a limit, kills a process that is frozen past it, and reads the line.

Used by the matrix (`matrix.py`) and by the speed-vs-length study's sweep; each caller builds
its own command line and words its own "killed" message.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .settings import RESULT_PREFIX
from .watchdog import Watchdog


def report_from_child(
    deadline_unix: float, measure: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """In the child: run `measure(progress)` under a watchdog and print its result line."""
    progress: dict[str, Any] = {}
    watchdog = Watchdog(deadline_unix, progress,
                        emit=lambda result: print(RESULT_PREFIX + json.dumps(result), flush=True))  # fmt: skip
    watchdog.finish(measure(progress))


@dataclass
class ChildOutcome:
    result: dict[str, Any] | None
    """The child's result fields; None when it was killed at the limit (it said nothing)."""
    elapsed_s: float
    run_command: str

    def provenance(self) -> dict[str, Any]:
        """The record fields that say how the child ran."""
        return {"elapsed_s": self.elapsed_s, "run_command": self.run_command}


def run_child(command: list[str], limit_s: float) -> ChildOutcome:
    """Run `command`, killing it after `limit_s`; a child that exits without a result line
    becomes an "error" result with its exit code and the tail of its output."""
    started = time.monotonic()
    # Same session as this process: whoever ends the caller also ends a run it left behind.
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = child.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        child.kill()  # SIGKILL to this run's process (by its pid), nothing else
        child.communicate()
        return ChildOutcome(None, time.monotonic() - started, " ".join(command))
    result = parse_result(stdout)
    if result is None:
        tail = stderr.strip()[-1500:] or stdout.strip()[-1500:]
        result = {"status": "error", "message": f"exit code {child.returncode}, no result; "
                                                f"output tail:\n{tail}"}  # fmt: skip
    return ChildOutcome(result, time.monotonic() - started, " ".join(command))


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The last RESULT_PREFIX line's JSON, or None if the child printed none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None
