"""The results file: one JSON object per line, one line per (impl, config, seq) run.

Files are only ever replaced whole (write a temp file, then rename), so an interrupted run
leaves the previous complete file, never half a line. Existing lines are kept: a second
matrix run on the same day and GPU appends, and readers take the newest line per key.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

STATUSES = ("ok", "oom", "error", "timeout", "skipped")

_NUMBER = (int, float)
_MAYBE_NUMBER = (int, float, type(None))
_MAYBE_STR = (str, type(None))
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "impl": (str,),
    "config": (str,),
    "seq": (int,),
    "status": (str,),
    "peak_gb": _MAYBE_NUMBER,  # max_memory_allocated over the timed steps (graph: + warm-up) / 1e9
    "tok_per_s": _MAYBE_NUMBER,  # seq / median step time
    "step_ms": _MAYBE_NUMBER,  # median over the timed steps
    "gpu": (str,),
    "torch": _MAYBE_STR,
    "impl_version": _MAYBE_STR,
    "timestamp": (str,),
    "command": (str,),  # the matrix command that produced this line
    "message": _MAYBE_STR,  # why a run is not "ok"
}


def validate_record(record: Any) -> dict[str, Any]:
    """Return `record` if it has every required field with the right type, else raise."""
    if not isinstance(record, dict):
        raise ValueError(f"a result must be a JSON object, got {type(record).__name__}")
    for name, types in REQUIRED_FIELDS.items():
        if name not in record:
            raise ValueError(f"result {_key_text(record)} lacks the field {name!r}")
        value = record[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(f"result {_key_text(record)}: {name}={value!r} has the wrong type")
    if record["status"] not in STATUSES:
        raise ValueError(
            f"result {_key_text(record)}: status {record['status']!r} not in {STATUSES}"
        )
    if record["status"] == "ok":
        for name in ("tok_per_s", "step_ms"):
            if not isinstance(record[name], _NUMBER):
                raise ValueError(f"result {_key_text(record)} is 'ok' but {name} is missing")
    elif not record["message"]:
        raise ValueError(f"result {_key_text(record)} is {record['status']!r} without a message")
    return record


def _key_text(record: Any) -> str:
    return "/".join(str(record.get(k, "?")) for k in ("impl", "config", "seq"))


def read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(validate_record(json.loads(line)))
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path}:{lineno}: {error}") from error
    return records


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace `path` by `records`, atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def append_record(
    records: list[dict[str, Any]], record: dict[str, Any], out: Path, mirror_dir: Path | None
) -> None:
    """Add `record` to `records` and rewrite `out` (and its copy in `mirror_dir`, if given),
    so every finished run is on disk before the next one starts."""
    records.append(record)
    write_records(out, records)
    if mirror_dir is not None:
        write_records(mirror_dir / out.name, records)


def latest_per_key(records: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The newest line for each (impl, config, seq): later lines win."""
    return {(r["impl"], r["config"], r["seq"]): r for r in records}


def gpu_name(device: str) -> str:
    """Name of GPU 0 without creating a CUDA context here ("cpu" for the CPU mode)."""
    if device == "cpu":
        return "cpu"
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0].strip()
    ask_torch = "import torch; print(torch.cuda.get_device_name(0))"
    done = subprocess.run([sys.executable, "-c", ask_torch], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown-gpu"


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def default_results_path(results_dir: Path, gpu: str) -> Path:
    return results_dir / f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}-{slug(gpu)}.jsonl"
