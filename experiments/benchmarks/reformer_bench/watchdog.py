"""A run's watchdog: at the run's deadline, report the phase still running and end the process.

A training step cannot be interrupted from Python, but torch releases the GIL while it works,
so a timer thread can still print the run's result ("timeout": which phase, for how long, the
steps finished so far) and exit. The matrix then learns why, instead of killing a silent
process after its grace period (still its fallback for a process that is frozen outright).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

Emit = Callable[[dict[str, Any]], None]


class Watchdog:
    """Exactly one of `finish(result)` (in time) or the deadline report is emitted."""

    def __init__(
        self,
        deadline_unix: float,
        progress: dict[str, Any],
        emit: Emit,
        exit: Callable[[int], Any] = os._exit,
    ) -> None:
        self._progress, self._emit, self._exit = progress, emit, exit
        self._lock = threading.Lock()
        self._done = False
        self._timer: threading.Timer | None = None
        if deadline_unix != float("inf"):
            self._timer = threading.Timer(max(0.0, deadline_unix - time.time()), self._fire)
            self._timer.daemon = True
            self._timer.start()

    def finish(self, result: dict[str, Any]) -> None:
        with self._lock:
            if self._done:  # the deadline report went out first
                return
            self._done = True
            if self._timer is not None:
                self._timer.cancel()
            self._emit(result)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            self._emit(timeout_report(self._progress))
            self._exit(0)  # the main thread is inside a step that cannot be stopped otherwise


def timeout_report(progress: dict[str, Any]) -> dict[str, Any]:
    """The result of a run whose current phase is still running at its deadline."""
    report = {key: list(value) if isinstance(value, list) else value
              for key, value in dict(progress).items()}  # fmt: skip  # a snapshot: the run goes on
    phase = report.get("phase", "start-up")  # no phase yet: still importing
    started = report.pop("phase_started_unix", None)
    running_s = None if started is None else time.time() - started
    report.update(status="timeout", phase=phase, phase_s=running_s, message=(
        f"{phase} still running at the run's deadline"
        + ("" if running_s is None else f", {running_s:.1f} s after it began")))  # fmt: skip
    return report
