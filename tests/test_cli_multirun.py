"""The real command line in a subprocess: a 2x2 multirun with a failing trial, W&B offline
files and groups, bad input reported without a traceback, --help / --cfg job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.usefixtures("reset_hydra")
TRAIN = "reformer_lab.cli.train"


@pytest.mark.slow
def test_a_2x2_multirun_records_failed_trials_and_goes_on(tmp_path: Path) -> None:
    """bucket_size=24 is not a power of two: those two jobs fail at validation, the other
    two train; every job has its own folder and result.json, W&B runs share one group."""
    overrides = [o for o in TINY if o != "logger=none"]
    done = run_cli(
        [
            TRAIN,
            "-m",
            *overrides,
            "logger=wandb",
            "test_after_fit=false",
            "model.bucket_size=16,24",
            "model.n_hashes=1,2",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "multirun" / "train").glob("*/*"))
    assert len(sweeps) == 1
    sweep = sweeps[0]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]

    outcomes = {p.name: json.loads((p / "result.json").read_text()) for p in jobs}
    for name, outcome in outcomes.items():
        bucket = 16 if name in ("0", "1") else 24
        assert f"model.bucket_size={bucket}" in outcome["overrides"]
        if bucket == 16:
            assert outcome["status"] == "ok", outcome["reason"]
            assert outcome["global_step"] == 4 and "val/loss" in outcome["metrics"]
            assert outcome["model"]["n_hashes"] == (1 if name == "0" else 2)
        else:
            assert outcome["status"] == "failed"
            assert "bucket_size=24 must be a power of two" in outcome["reason"]
            assert not (sweep / name / "checkpoints").exists()  # rejected before any training

    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["n_ok"], summary["n_failed"]) == (2, 2)

    # The sweep as a table and a plot, by the command users run on their own sweeps.
    reported = run_cli(["reformer_lab.cli.report", str(sweep)], cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr[-3000:]
    table = (sweep / "report.md").read_text()
    assert "4 runs, 2 ok, 2 failed" in table
    assert table.count("bucket_size=24 must be a power of two") == 2
    assert (sweep / "report-val_accuracy.png").read_bytes()[:4] == b"\x89PNG"  # the headline metric

    group = "_".join(sweep.parts[-3:]).encode()  # train_<date>_<time>
    for name in ("0", "1"):
        runs = list((sweep / name / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, f"job {name}: one finished offline W&B run"
        record = runs[0].read_bytes()
        assert group in record  # the shared sweep group
        assert b"run_config" in record and b"bucket_size" in record  # the resolved config


def test_bad_input_fails_fast_with_a_message_and_no_traceback(tmp_path: Path) -> None:
    done = run_cli(
        [TRAIN, "~local", "logger=none", "model.dim=30", "model.heads=4", "hydra.run.dir=run"],
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "reformer-train: error: model: dim=30 is not divisible by heads=4" in done.stderr
    assert "Traceback" not in done.stderr
    outcome = json.loads((tmp_path / "run" / "result.json").read_text())
    assert outcome["status"] == "failed" and "dim=30" in outcome["reason"]


def test_help_and_cfg_job_do_not_train(tmp_path: Path) -> None:
    shown = run_cli([TRAIN, "--cfg", "job", "~local", "model.n_hashes=3"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert (
        "n_hashes: 3" in shown.stdout
        and "_target_: reformer_lab.data.DuplicationDataModule" in shown.stdout
    )
    helped = run_cli([TRAIN, "--help"], cwd=tmp_path)
    assert helped.returncode == 0 and "experiment:" in helped.stdout and "model:" in helped.stdout
    assert not (tmp_path / "outputs").exists()
