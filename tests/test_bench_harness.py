"""The benchmark harness (experiments/benchmarks) in its CPU mode: runs, failures, skips, files."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from reformer_bench.matrix import MatrixOptions, plan, run_matrix  # noqa: E402
from reformer_bench.measure import RunSpec, run_one  # noqa: E402
from reformer_bench.records import read_records, validate_record, write_records  # noqa: E402
from reformer_bench.watchdog import Watchdog  # noqa: E402


def load_cli():
    spec = importlib.util.spec_from_file_location("bench_run_cli", BENCH_DIR / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCH_DIR / "run.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_matrix_on_cpu_records_runs_failures_and_skips(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    done = run_cli(
        "matrix", "--device", "cpu", "--configs", "tiny", "--impls", "reformer-lab", "full",
        "full-ckpt", "--seqs", "256", "512", "1024", "--target-s", "0",
        "--inject", "reformer-lab:512:oom", "--inject", "full:512:crash",
        "--inject", "full-ckpt:512:error", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = read_records(out)  # validates every line's schema
    status = {(r["impl"], r["seq"]): r["status"] for r in records}
    assert status == {
        ("reformer-lab", 256): "ok", ("reformer-lab", 512): "oom", ("reformer-lab", 1024): "skipped",
        ("full", 256): "ok", ("full", 512): "error", ("full", 1024): "skipped",
        ("full-ckpt", 256): "ok", ("full-ckpt", 512): "error", ("full-ckpt", 1024): "skipped",
    }  # fmt: skip
    assert [(r["impl"], r["seq"]) for r in records] == [(i, s) for i, _, s in plan(
        ["reformer-lab", "full", "full-ckpt"], ["tiny"], [256, 512, 1024])]  # fmt: skip
    by_key = {(r["impl"], r["seq"]): r for r in records}
    for impl in ("reformer-lab", "full", "full-ckpt"):
        ok = by_key[(impl, 256)]
        assert ok["peak_gb"] is None and ok["gpu"] == "cpu" and ok["n_steps"] >= 3
        assert ok["step_ms"] == pytest.approx(statistics.median(ok["step_ms_all"]))
        assert ok["tok_per_s"] == pytest.approx(256 / (ok["step_ms"] / 1e3))
        assert (
            ok["torch"] and ok["impl_version"] and ok["timestamp"] and "--inject" in ok["command"]
        )
        assert ok["run_command"].split()[2:4] == ["one", "--impl"]
    assert by_key[("reformer-lab", 512)]["message"].startswith("OutOfMemoryError")
    assert by_key[("reformer-lab", 1024)]["message"] == "after oom at seq 512"
    assert "exit code 3" in by_key[("full", 512)]["message"]  # died without a result
    assert "injected error" in by_key[("full-ckpt", 512)]["message"]  # exception, traceback kept
    assert by_key[("full-ckpt", 1024)]["message"] == "after error at seq 512"
    assert "reformer-lab 0.1.0" in by_key[("reformer-lab", 256)]["impl_version"]

    markdown = out.with_suffix(".md").read_text()  # rendered by the matrix command
    assert "| tiny | reformer-lab | full-ckpt | full |" in markdown
    row_256 = next(line for line in markdown.splitlines() if line.startswith("| 256 |"))
    assert row_256.count("— / ") == 3  # no peak memory on the CPU, a rate for each impl
    assert "| 1K | skipped | skipped | skipped |" in markdown
    for suffix in ("-memory.png", "-throughput.png"):
        assert (tmp_path / f"results{suffix}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_slow_and_frozen_runs_time_out_and_longer_lengths_are_skipped(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    started = time.monotonic()
    done = run_cli(
        "matrix", "--device", "cpu", "--configs", "tiny", "--impls", "full", "full-ckpt",
        "--seqs", "256", "512", "--run-timeout-s", "4", "--grace-s", "0.5",
        "--inject", "full:256:slow", "--inject", "full-ckpt:256:hang", "--out", str(out),
        "--no-render",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 40
    slow, slow_after, frozen, frozen_after = read_records(out)
    # the run's watchdog reports the phase still running at the deadline (the warm-up step,
    # unless a loaded machine is still importing torch at 4 s)
    assert slow["status"] == "timeout" and slow["cut_by_budget"] is False
    assert slow["message"].startswith(f"{slow['phase']} still running at the run's deadline")
    assert slow["phase"] in ("warm-up", "build", "start-up")
    # a frozen process says nothing: the matrix kills it after the grace period
    assert frozen["status"] == "timeout" and frozen["message"].startswith("killed after")
    for after in (slow_after, frozen_after):
        assert after["status"] == "skipped" and after["message"] == "after timeout at seq 256"


def test_watchdog_reports_the_running_phase_once_at_the_deadline() -> None:
    emitted, exits = [], []
    progress = {"phase": "warm-up", "phase_started_unix": time.time() - 5.0, "step_ms_all": [1.0]}
    watchdog = Watchdog(time.time() + 0.05, progress, emitted.append, exit=exits.append)
    time.sleep(0.5)
    assert exits == [0] and len(emitted) == 1
    report = emitted[0]
    assert report["status"] == "timeout" and report["phase"] == "warm-up"
    assert 5.0 <= report["phase_s"] < 10.0 and report["step_ms_all"] == [1.0]
    assert report["message"].startswith("warm-up still running at the run's deadline, 5.")
    assert "phase_started_unix" not in report and "phase_started_unix" in progress
    watchdog.finish({"status": "ok"})  # too late: the deadline report stands alone
    assert len(emitted) == 1


def test_watchdog_stays_silent_when_the_run_finishes_in_time() -> None:
    emitted, exits = [], []
    watchdog = Watchdog(time.time() + 0.2, {}, emitted.append, exit=exits.append)
    watchdog.finish({"status": "ok"})
    time.sleep(0.4)
    assert emitted == [{"status": "ok"}] and exits == []


def test_one_run_in_process_times_the_median_of_its_steps() -> None:
    result = run_one(RunSpec("full", "tiny", 128, device="cpu", min_steps=3, target_s=0.0))
    assert result["status"] == "ok", result["message"]
    assert result["n_steps"] == 3 == len(result["step_ms_all"])
    assert result["step_ms"] == statistics.median(result["step_ms_all"])
    assert result["tok_per_s"] == pytest.approx(128e3 / result["step_ms"])
    assert result["peak_gb"] is None and result["warmup_ms"] > 0
    norm, qkv, attn_out, ff = 2 * 64, 64 * 192, 64 * 64, (64 * 256 + 256) + (256 * 64 + 64)
    block = norm + qkv + attn_out + norm + ff
    assert result["n_params"] == 256 * 64 + 2 * block + norm + 64 * 256  # tiny: dim 64, vocab 256


def test_a_run_past_its_deadline_reports_timeout_not_a_fake_median() -> None:
    result = run_one(RunSpec("full", "tiny", 128, device="cpu", deadline_unix=time.time()))
    assert result["status"] == "timeout"
    assert result["message"].startswith("only 0 of 3 timed steps fit")
    assert "step_ms" not in result and result["step_ms_all"] == []


def test_injected_exceptions_become_statuses() -> None:
    oom = run_one(RunSpec("full", "tiny", 128, device="cpu", inject="oom"))
    assert oom["status"] == "oom" and "injected" in oom["message"]
    error = run_one(RunSpec("full", "tiny", 128, device="cpu", inject="error"))
    assert error["status"] == "error" and "ValueError: injected error" in error["message"]


def test_matrix_keeps_existing_lines_and_skips_all_when_the_budget_is_spent(tmp_path: Path) -> None:
    out, mirror = tmp_path / "r.jsonl", tmp_path / "mirror"
    old = {"impl": "full", "config": "base", "seq": 4096, "status": "ok", "peak_gb": 1.0,
           "tok_per_s": 2.0, "step_ms": 3.0, "gpu": "g", "torch": "t", "impl_version": "v",
           "timestamp": "2026-01-01T00:00:00+00:00", "command": "c", "message": None}  # fmt: skip
    write_records(out, [old])
    options = MatrixOptions(
        impls=["full", "full-ckpt"], configs=["tiny"], seqs=[512, 256], device="cpu", out=out,
        gpu="cpu", command="test", run_script=BENCH_DIR / "run.py", budget_s=1e-3,
        mirror_dir=mirror,
    )  # fmt: skip
    new = run_matrix(options, log=lambda line: None)
    assert [(r["impl"], r["seq"]) for r in new] == [
        ("full", 256),
        ("full", 512),
        ("full-ckpt", 256),
        ("full-ckpt", 512),
    ]
    assert all(r["status"] == "skipped" and "budget" in r["message"] for r in new)
    records = read_records(out)
    assert records[0] == old and records[1:] == new
    assert (mirror / "r.jsonl").read_text() == out.read_text()
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed, not left behind


def test_validate_record_names_the_bad_field() -> None:
    good = {"impl": "full", "config": "tiny", "seq": 256, "status": "oom", "peak_gb": None,
            "tok_per_s": None, "step_ms": None, "gpu": "cpu", "torch": None, "impl_version": None,
            "timestamp": "t", "command": "c", "message": "out of memory"}  # fmt: skip
    assert validate_record(dict(good)) == good
    with pytest.raises(ValueError, match="lacks the field 'gpu'"):
        validate_record({k: v for k, v in good.items() if k != "gpu"})
    with pytest.raises(ValueError, match="status 'fine'"):
        validate_record({**good, "status": "fine"})
    with pytest.raises(ValueError, match="without a message"):
        validate_record({**good, "message": None})
    with pytest.raises(ValueError, match="'ok' but tok_per_s is missing"):
        validate_record({**good, "status": "ok", "step_ms": 1.0})
    with pytest.raises(ValueError, match="seq='256' has the wrong type"):
        validate_record({**good, "seq": "256"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seqs", "300"], "must be a power of two"),
        (["--seqs", "64", "--configs", "base"], "shorter than two buckets"),
        (["--inject", "full:256:explode"], "IMPL:SEQ:KIND"),
        (["--budget-s", "0"], "must be positive"),
        (["--out", "results.txt"], "must end in .jsonl"),
    ],
)
def test_matrix_rejects_bad_input_before_any_run(args: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        load_cli().main(["matrix", "--device", "cpu", *args])


def test_matrix_refuses_to_append_to_a_file_that_is_not_results(tmp_path: Path) -> None:
    out = tmp_path / "notes.jsonl"
    out.write_text(json.dumps({"impl": "full"}) + "\n")
    with pytest.raises(SystemExit, match="not a results file"):
        load_cli().main(["matrix", "--device", "cpu", "--out", str(out)])
    assert out.read_text() == json.dumps({"impl": "full"}) + "\n"  # untouched
