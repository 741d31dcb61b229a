"""reformer-report on sweep folders in the exact format cli/run.py writes (result.json, csv logs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reformer_lab.cli.report import curve_label, load_jobs, main, markdown_table, swept_keys

PNG = b"\x89PNG"


def make_sweep(root: Path) -> Path:
    """Six jobs over bucket_size x n_hashes (3 x 2), one failed, csv logs for two."""
    sweep = root / "multirun" / "train" / "2026-11-23" / "10-00-00"
    job = 0
    for bucket in (16, 32, 64):
        for hashes in (1, 2):
            folder = sweep / str(job)
            folder.mkdir(parents=True)
            failed = bucket == 64 and hashes == 2
            result = {
                "status": "failed" if failed else "ok",
                "reason": "CUDA out of memory: lower data.batch_size" if failed else None,
                "overrides": [f"model.bucket_size={bucket}", f"model.n_hashes={hashes}"],
                "metrics": {}
                if failed
                else {"test/accuracy": 0.5 + job / 20, "val/loss": 2.0 - job / 10},
            }
            (folder / "result.json").write_text(json.dumps(result))
            if job < 2:
                csv_dir = folder / "csv"
                csv_dir.mkdir()
                rows = ["epoch,step,train/loss,val/loss"]
                rows += [f"0,{s},{3 - s / 10 - job}," for s in range(5)] + ["0,4,,1.5"]
                (csv_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
            job += 1
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_table_has_one_row_per_job_with_overrides_status_and_metrics(tmp_path):
    jobs = load_jobs(make_sweep(tmp_path))
    assert [j["job"] for j in jobs] == ["0", "1", "2", "3", "4", "5"]
    assert swept_keys(jobs) == ["model.bucket_size", "model.n_hashes"]
    table = markdown_table(jobs, "test/accuracy").splitlines()
    assert (
        table[0]
        == "| job | model.bucket_size | model.n_hashes | status | test/accuracy | val/loss |"
    )
    assert table[2] == "| 0 | 16 | 1 | ok | 0.5 | 2 |"
    assert table[7] == "| 5 | 64 | 2 | failed: CUDA out of memory: lower data.batch_size |  |  |"


def test_command_writes_report_plot_and_curves(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    out = tmp_path / "report"
    main([str(sweep), "--out", str(out)])
    printed = capsys.readouterr().out.split()
    text = (out / "report.md").read_text()
    assert "6 runs, 5 ok, 1 failed" in text and "(report-test_accuracy.png)" in text
    for name in ("report-test_accuracy.png", "curves-train_loss.png", "curves-val_accuracy.png"):
        if name == "curves-val_accuracy.png":  # no job logged val/accuracy per step
            assert not (out / name).exists()
            continue
        assert (out / name).read_bytes()[:4] == PNG
        assert str(out / name) in printed
    assert not list(out.glob(".*.tmp"))  # nothing half-written left behind


def test_bad_input_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match=r"holds no result\.json"):
        main([str(tmp_path)])
    with pytest.raises(SystemExit, match="is not a folder"):
        main([str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="no job has metric 'test/bleu'"):
        main([str(make_sweep(tmp_path)), "--metric", "test/bleu"])


def test_curve_labels_name_only_what_was_swept(tmp_path):
    """An override every job shares (here trainer.max_time) stays out of the legend."""
    sweep = make_sweep(tmp_path)
    for folder in sorted(p for p in sweep.iterdir() if p.is_dir()):
        result = json.loads((folder / "result.json").read_text())
        result["overrides"].append("trainer.max_time=00:00:07:30")
        (folder / "result.json").write_text(json.dumps(result))
    jobs = load_jobs(sweep)
    keys = swept_keys(jobs)
    assert [curve_label(job, keys) for job in jobs[:2]] == [
        "model.bucket_size=16 model.n_hashes=1",
        "model.bucket_size=16 model.n_hashes=2",
    ]
    assert curve_label(jobs[0], []) == f"job {jobs[0]['job']}"
