"""Helpers shared by the generation experiments: machine description and safe result files."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def code_version() -> str:
    """The git commit of this checkout, and whether tracked files had uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD"], cwd=root, capture_output=True
        ).returncode
    except OSError:
        return "unknown (git not available)"
    return f"{commit or 'unknown'}" + (" + uncommitted changes" if dirty else "")


def machine_lines(threads: int) -> list[str]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return [
        f"- code: git {code_version()}",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores visible, {platform.platform()}",
        f"- torch {torch.__version__}, torch.set_num_threads({threads})",
        f"- load average when the run ended (other jobs share this machine): {load}",
    ]


def refuse_to_overwrite(path: Path, overwrite: bool) -> None:
    """Fail before any work if a result file would be replaced without --overwrite."""
    if path.exists() and not overwrite:
        raise SystemExit(f"{path} exists: pass --overwrite to replace it, or --out another file")
    if not path.parent.is_dir():
        raise SystemExit(f"{path.parent} is not a directory: create it or choose another --out")


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: never a half-written result."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
