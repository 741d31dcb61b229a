"""Every run leaves `result.json` in its folder: status ok/failed, the reason, the final metrics.

A failed trial of a multirun is recorded and the sweep goes on; `SweepSummary` (a Hydra
callback) lists the outcome of every job when the sweep ends and writes `summary.json`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_global_rank_zero(trainer: Any = None) -> bool:
    """False in the extra processes Lightning starts for DDP (they must not write results)."""
    if trainer is not None:
        return trainer.global_rank == 0
    from lightning.pytorch.utilities import rank_zero_only  # rank from RANK / LOCAL_RANK / SLURM

    return getattr(rank_zero_only, "rank", 0) == 0


class SweepSummary(HydraCallback):
    """At the end of a multirun: one line per job (ok/failed + reason) and sweep_dir/summary.json."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = []
        for result in sorted(sweep_dir.glob(f"*/{RESULT_FILE}"), key=_job_order):
            outcome = json.loads(result.read_text())
            jobs.append(
                {
                    "job": result.parent.name,
                    **{k: outcome.get(k) for k in ("status", "reason", "overrides", "metrics")},
                }
            )
        failed = [j for j in jobs if j["status"] != "ok"]
        write_json_atomically(
            sweep_dir / SUMMARY_FILE,
            {"jobs": jobs, "n_ok": len(jobs) - len(failed), "n_failed": len(failed)},
        )
        log.info(f"sweep {sweep_dir}: {len(jobs) - len(failed)} ok, {len(failed)} failed")
        for job in failed:
            log.warning(f"  job {job['job']} {' '.join(job['overrides'] or [])}: {job['reason']}")


def _job_order(path: Path) -> tuple[int, str]:
    name = path.parent.name
    return (int(name), name) if name.isdigit() else (1 << 30, name)
