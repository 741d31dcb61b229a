"""W&B: offline by default, the resolved config logged, and the run finished even when the
training fails (so the next job of a sweep starts its own run)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reformer_lab.cli.run import run_recorded
from reformer_lab.cli.train import train
from tests.conftest import TINY, compose_train

pytestmark = pytest.mark.usefixtures("reset_hydra")


@pytest.mark.slow
def test_wandb_runs_offline_and_is_finished_after_a_failed_run(tmp_path: Path, monkeypatch) -> None:
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default must be offline by itself
    monkeypatch.setenv("WANDB_SILENT", "true")
    poison = "+callbacks.poison={_target_: tests.test_lit_callbacks.PoisonWeightsAtStep, step: 5}"
    overrides = [o for o in TINY if o != "logger=none"]
    cfg = compose_train(
        [*overrides, "logger=wandb", "trainer.max_steps=8", poison], output_dir=tmp_path
    )
    assert cfg.logger.wandb.mode == "offline"
    with pytest.raises(SystemExit, match="loss became nan"):
        run_recorded(cfg, train, program="reformer-train")
    assert wandb.run is None  # finished in the finally, despite the failure

    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    record = read_when_written(run_file)
    assert b"run_config" in record and b"memory_budget_gb" in record  # resolved config logged
    assert b"val/loss" in record  # metrics of the epoch that finished
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


def read_when_written(path: Path, timeout: float = 20.0) -> bytes:
    """wandb-core's writer may still be flushing the records for a moment after finish()."""
    deadline = time.time() + timeout
    while b"run_config" not in (data := path.read_bytes()) and time.time() < deadline:
        time.sleep(0.2)
    return data
