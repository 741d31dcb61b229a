"""Rerun a Triton-interpreter test file in a fresh Python process.

Triton reads TRITON_INTERPRET=1 when it is first imported; inside a full pytest run it has
usually been imported already (Lightning imports it), so the kernel test files skip their
in-process tests and call `rerun_in_fresh_process(__file__)` from a test of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def rerun_in_fresh_process(test_file: str) -> None:
    """Runs every test of `test_file` but the rerun itself with the interpreter on; all must pass."""
    if os.environ.get("KERNEL_TEST_CHILD") == "1":
        pytest.fail("the interpreter is not usable even in a fresh process with TRITON_INTERPRET=1")
    src = Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "KERNEL_TEST_CHILD": "1",
        "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-k", "not fresh_process", test_file]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    last = run.stdout.splitlines()[-1]
    assert " passed" in last and "skipped" not in last, run.stdout[-2000:]
