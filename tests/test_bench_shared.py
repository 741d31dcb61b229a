"""The harness pieces the benchmark and the speed-vs-length study share (experiments/benchmarks/
reformer_bench/{commands,child,timing}.py): the recorded commit, the subprocess runner, the
timed-step loop and the failures it turns into statuses."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "experiments" / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from reformer_bench.child import parse_result, run_child  # noqa: E402
from reformer_bench.commands import check_results_out, git_commit, render_and_mirror  # noqa: E402
from reformer_bench.settings import RESULT_PREFIX  # noqa: E402


# --- the recorded commit -----------------------------------------------------------------
def git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def test_git_commit_is_dirty_only_for_changes_under_the_named_paths(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "experiments" / "benchmarks").mkdir(parents=True)
    (tmp_path / "src" / "model.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("readme\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert git_commit(tmp_path, ["src"]) == head
    (tmp_path / "README.md").write_text("changed\n")  # outside src/: still clean
    assert git_commit(tmp_path, ["src"]) == head
    (tmp_path / "src" / "model.py").write_text("x = 2\n")
    assert git_commit(tmp_path, ["src"]) == f"{head}-dirty"
    # the old bug: git run from experiments/benchmarks looked for experiments/benchmarks/src
    assert git_commit(tmp_path / "experiments" / "benchmarks", ["src"]) == head


def test_git_commit_falls_back_to_the_environment_without_a_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above it
    monkeypatch.setenv("BENCH_GIT_COMMIT", "abc1234")
    assert git_commit(tmp_path, ["src"]) == "abc1234"
    monkeypatch.delenv("BENCH_GIT_COMMIT")
    assert git_commit(tmp_path, ["src"]) is None


def test_benchmark_run_records_the_commit_of_the_repository_root() -> None:
    spec = importlib.util.spec_from_file_location("bench_run_cli_git", BENCH_DIR / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.REPO == REPO and (module.REPO / "src" / "reformer_lab").is_dir()


# --- the results file and rendering ------------------------------------------------------
def test_check_results_out_refuses_what_it_could_not_append_to(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"--out .*results.txt must end in \.jsonl"):
        check_results_out(tmp_path / "results.txt")
    notes = tmp_path / "notes.jsonl"
    notes.write_text("not json\n")
    with pytest.raises(SystemExit, match="is not a results file, refusing to add to it"):
        check_results_out(notes)
    assert notes.read_text() == "not json\n"
    check_results_out(tmp_path / "new.jsonl")  # a file still to be made is fine


def test_render_and_mirror_copies_every_written_file(tmp_path: Path, capsys) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()

    def render(jsonl: Path) -> list[Path]:
        written = [jsonl.with_suffix(".md"), jsonl.with_suffix(".png")]
        for index, path in enumerate(written):
            path.write_bytes(bytes([index]) * 10)
        return written

    render_and_mirror(render, tmp_path / "r.jsonl", mirror)
    assert sorted(p.name for p in mirror.iterdir()) == ["r.md", "r.png"]  # no temp files left
    assert (mirror / "r.png").read_bytes() == b"\x01" * 10
    assert capsys.readouterr().out == f"rendered {tmp_path / 'r.md'}, {tmp_path / 'r.png'}\n"


# --- one run in a subprocess -------------------------------------------------------------
def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_child_reads_the_last_result_line() -> None:
    lines = [f"print({RESULT_PREFIX + json.dumps({'status': s})!r})" for s in ("timeout", "ok")]
    outcome = run_child(python("; ".join(["print('noise')", *lines])), limit_s=60)
    assert outcome.result == {"status": "ok"}
    assert outcome.run_command.startswith(sys.executable) and outcome.elapsed_s > 0
    assert outcome.provenance() == {"elapsed_s": outcome.elapsed_s,
                                    "run_command": outcome.run_command}  # fmt: skip
    assert parse_result("nothing here\n") is None


def test_run_child_without_a_result_is_an_error_with_the_output_tail() -> None:
    outcome = run_child(python("import sys; print('boom', file=sys.stderr); sys.exit(3)"), 60)
    assert outcome.result == {"status": "error",
                              "message": "exit code 3, no result; output tail:\nboom"}  # fmt: skip


def test_run_child_kills_a_frozen_child_at_the_limit() -> None:
    started = time.monotonic()
    outcome = run_child(python("import time; time.sleep(60)"), limit_s=0.5)
    assert outcome.result is None  # killed: the caller words the timeout
    assert 0.5 <= outcome.elapsed_s < 20 and time.monotonic() - started < 20


# --- the timed steps and the failures ----------------------------------------------------
@dataclass
class Limits:
    min_steps: int = 3
    max_steps: int = 10
    target_s: float = 0.0
    deadline_unix: float = float("inf")


def test_timed_steps_calls_the_step_once_per_recorded_time() -> None:
    import torch
    from reformer_bench.timing import timed_steps

    calls = []

    def step() -> torch.Tensor:
        calls.append(1)
        time.sleep(0.002)
        return torch.tensor(0.0)

    cpu = torch.device("cpu")
    result: dict = {"step_ms_all": []}
    seconds = timed_steps(step, cpu, Limits(), 0.0, result)  # target 0: exactly min_steps
    assert len(calls) == len(seconds) == 3 and result["phase"] == "timed step 3"
    assert result["step_ms_all"] == [1e3 * s for s in seconds] and min(seconds) >= 0.002
    calls.clear()
    seconds = timed_steps(step, cpu, Limits(max_steps=5, target_s=60.0), 0.0, {"step_ms_all": []})
    assert len(calls) == len(seconds) == 5  # the target is never reached: max_steps ends it
    calls.clear()
    late = Limits(deadline_unix=time.time() + 0.5)
    assert timed_steps(step, cpu, late, 1.0, {"step_ms_all": []}) == [] and calls == []


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling x"), "oom",
         "RuntimeError: CUBLAS_STATUS_ALLOC_FAILED when calling x"),
        (RuntimeError("shapes do not match"), "error", "RuntimeError: shapes do not match"),
        (KeyError("settings"), "error", "KeyError: 'settings'"),
    ],
)  # fmt: skip
def test_measure_guarded_turns_failures_into_statuses(error, status, message) -> None:
    from reformer_bench.timing import measure_guarded

    def measure() -> dict:
        raise error

    result = measure_guarded({}, "cpu", measure, batch=4)
    assert result["status"] == status and result["message"].splitlines()[-1] == message
    assert list(result)[:3] == ["torch", "cuda", "batch"] and result["batch"] == 4
    assert result["gpu"] == "cpu" and result["phase"] == "build"
    assert "phase_started_unix" not in result


def test_git_commit_from_the_environment_wins_over_a_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU machine's copy of the tree carried a .git older than its files (2026-12-02):
    a commit named in $BENCH_GIT_COMMIT is the one recorded."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.py").write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    monkeypatch.setenv("BENCH_GIT_COMMIT", "abc1234")
    assert git_commit(tmp_path, ["src"]) == "abc1234"
