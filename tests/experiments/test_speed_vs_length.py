"""experiments/speed_vs_length (Reformer Fig. 5 right) on the CPU with the tiny model: the cells,
the refusals, the step (with its optimizer), the sweep's skips, the records, the table."""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEED_DIR = REPO / "experiments" / "speed_vs_length"
for folder in (REPO / "experiments" / "benchmarks", SPEED_DIR):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from reformer_bench.records import read_records, write_records  # noqa: E402
from reformer_bench.settings import SIZES  # noqa: E402
from speed_sweep.cells import (  # noqa: E402
    DEFAULT_IMPLS,
    DEFAULT_LENGTHS,
    Cell,
    attention_settings,
    build_config,
    plan_cells,
)
from speed_sweep.sweep import SweepOptions, run_sweep  # noqa: E402
from speed_sweep.table import render  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = "base, 32768 tokens/step"


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SPEED_DIR / "run.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


# --- cells -------------------------------------------------------------------------------
def test_cells_are_every_impl_at_every_length_with_batch_times_length_fixed() -> None:
    cells = plan_cells(DEFAULT_IMPLS, DEFAULT_LENGTHS, 32768, SIZES["base"])
    assert len(cells) == 30
    assert [(c.impl, c.seq) for c in cells] == list(
        itertools.product(DEFAULT_IMPLS, DEFAULT_LENGTHS)
    )
    assert all(c.batch * c.seq == 32768 for c in cells)
    assert [c.batch for c in cells[:6]] == [32, 16, 8, 4, 2, 1]
    # another total: still every pair, lengths sorted shortest first
    cells = plan_cells(["lsh8", "full"], [4096, 1024], 8192, SIZES["base"])
    assert cells == [Cell("lsh8", 1024, 8), Cell("lsh8", 4096, 2), Cell("full", 1024, 8),
                     Cell("full", 4096, 2)]  # fmt: skip


@pytest.mark.parametrize(
    ("impls", "lengths", "total", "message"),
    [
        (["full"], [1024, 4096], 3000, "3000 is not divisible by length 1024"),
        (["full"], [1024, 32768], 16384, "16384 is not divisible by length 32768"),
        (["full"], [1024], 0, "must be a positive integer"),
        (["lsh3"], [1024], 32768, "unknown implementation(s) ['lsh3']"),
        (["full", "full"], [1024], 32768, "given twice"),
        (["full"], [1000], 32000, "must be a power of two"),
        (["full"], [64], 32768, "shorter than two buckets"),
        ([], [1024], 32768, "at least one implementation"),
    ],
)
def test_bad_plans_are_refused_with_what_to_change(impls, lengths, total, message) -> None:
    with pytest.raises(ValueError) as error:
        plan_cells(impls, lengths, total, SIZES["base"])
    assert message in str(error.value)


def test_cli_refuses_an_indivisible_total_before_any_cell(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    started = time.monotonic()
    done = run_cli("sweep", "--device", "cpu", "--size", "tiny", "--lengths", "64", "128",
                   "--total-tokens", "200", "--out", str(out), timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert "refusing to start: total tokens per step 200 is not divisible by length 64" in (
        done.stderr
    )
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written
    assert time.monotonic() - started < 30  # no model was built


def test_full_takes_separate_qk_and_lsh_takes_its_rounds() -> None:
    tiny = SIZES["tiny"]
    full = build_config("full", tiny, 64)
    assert (full.attention, full.shared_qk, full.pad_multiple) == ("full", False, 1)  # flash path
    paper_full = build_config("full-shared-qk", tiny, 64)
    assert (paper_full.attention, paper_full.shared_qk) == ("full", True)
    for rounds in (1, 2, 4, 8):
        cfg = build_config(f"lsh{rounds}", tiny, 128)
        assert (cfg.attention, cfg.shared_qk, cfg.n_hashes) == ("lsh", True, rounds)
        assert (cfg.dim, cfg.depth, cfg.heads, cfg.bucket_size) == (64, 2, 4, 16)
        assert cfg.max_seq_len == 128 and cfg.axial_shape == (8, 16) and cfg.reversible
    assert attention_settings("lsh4", SIZES["base"])["n_hashes"] == 4


# --- the step ----------------------------------------------------------------------------
def test_training_step_includes_the_optimizer_step() -> None:
    import torch
    from speed_sweep.step import training_step

    from reformer_lab.model import ReformerLM

    torch.manual_seed(0)
    model = ReformerLM(build_config("lsh2", SIZES["tiny"], 64)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    tokens = torch.randint(0, 256, (2, 65))  # (B, L + 1)
    loss = training_step(model, optimizer, tokens, "cpu")
    assert torch.isfinite(loss) and loss.shape == ()
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(changed)  # Adam moved every parameter: the step is not forward + backward only


def test_measure_cell_on_cpu_reports_the_median_and_tokens_per_step() -> None:
    from speed_sweep.step import Timing, measure_cell

    result = measure_cell(Cell("lsh1", 64, 2), SIZES["tiny"], Timing(device="cpu", target_s=0))
    assert result["status"] == "ok", result["message"]
    assert result["n_steps"] == 3 and len(result["step_ms_all"]) == 3 and result["batch"] == 2
    assert result["step_ms"] == pytest.approx(statistics.median(result["step_ms_all"]))
    assert result["seconds_per_step"] == pytest.approx(result["step_ms"] / 1e3)
    assert result["tok_per_s"] == pytest.approx(128 / result["seconds_per_step"])
    assert result["gpu"] == "cpu" and result["peak_gb"] is None
    assert result["settings"]["n_hashes"] == 1 and result["settings"]["attention"] == "lsh"
    assert "phase_started_unix" not in result

    late = measure_cell(Cell("full", 64, 2), SIZES["tiny"],
                        Timing(device="cpu", deadline_unix=time.time()))  # fmt: skip
    assert late["status"] == "timeout"
    assert late["message"].startswith("only 0 of 3 timed steps fit before the cell's deadline")


# --- the sweep ---------------------------------------------------------------------------
def options(tmp_path: Path, cells: list[Cell], **fields) -> SweepOptions:
    return SweepOptions(cells=cells, size="base", config=CONFIG, total_tokens=32768,
                        device="cuda", out=tmp_path / "r.jsonl", gpu="test-gpu", command="test",
                        run_script=SPEED_DIR / "run.py", **fields)  # fmt: skip


def fake_result(status: str, seconds: float = 0.1) -> dict:
    if status == "ok":
        return {"status": "ok", "message": None, "torch": "t", "impl_version": "v",
                "step_ms": 1e3 * seconds, "seconds_per_step": seconds, "tok_per_s": 32768 / seconds}  # fmt: skip
    return {"status": status, "message": f"{status} (fake)", "torch": "t", "impl_version": "v"}


def test_sweep_stops_an_impl_after_oom_only_and_records_every_cell(tmp_path: Path) -> None:
    cells = plan_cells(["full", "lsh1"], [1024, 2048, 4096], 32768, SIZES["base"])
    outcome = {("full", 2048): "oom", ("lsh1", 1024): "timeout"}
    asked = []

    def run_cell(cell: Cell, deadline_unix: float) -> dict:
        asked.append((cell.impl, cell.seq))
        assert deadline_unix <= time.time() + 60.0 + 1.0  # the per-cell limit
        return fake_result(outcome.get((cell.impl, cell.seq), "ok"))

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    new = run_sweep(options(tmp_path, cells, mirror_dir=mirror), log=lambda _: None,
                    run_cell=run_cell)  # fmt: skip
    # full 4096 is never run: it would need more memory than 2048 did
    assert asked == [("full", 1024), ("full", 2048), ("lsh1", 1024), ("lsh1", 2048),
                     ("lsh1", 4096)]  # fmt: skip
    records = read_records(tmp_path / "r.jsonl")  # every line passes the harness's schema
    assert records == new and read_records(mirror / "r.jsonl") == records
    status = {(r["impl"], r["seq"]): r["status"] for r in records}
    assert status == {("full", 1024): "ok", ("full", 2048): "oom", ("full", 4096): "skipped",
                      ("lsh1", 1024): "timeout", ("lsh1", 2048): "ok", ("lsh1", 4096): "ok"}  # fmt: skip
    assert records[2]["message"] == "after oom at length 2048"
    assert records[3]["cut_by_budget"] is False
    for record in records:
        assert record["batch"] * record["seq"] == 32768 == record["total_tokens"]
        assert record["config"] == CONFIG and record["gpu"] == "test-gpu"


def test_sweep_skips_cells_the_budget_leaves_no_time_for(tmp_path: Path) -> None:
    cells = plan_cells(["lsh4"], [1024, 2048], 32768, SIZES["base"])
    ran = []
    run_sweep(options(tmp_path, cells, budget_s=10.0, min_cell_s=15.0), log=lambda _: None,
              run_cell=lambda cell, deadline: ran.append(cell) or fake_result("ok"))  # fmt: skip
    records = read_records(tmp_path / "r.jsonl")
    assert ran == [] and [r["status"] for r in records] == ["skipped", "skipped"]
    assert records[0]["message"] == "the total time budget of 10 s was spent"


@pytest.mark.slow
def test_real_cells_in_subprocesses_on_cpu_write_records_table_and_plot(tmp_path: Path) -> None:
    out, mirror = tmp_path / "results.jsonl", tmp_path / "mirror"
    done = run_cli("sweep", "--device", "cpu", "--size", "tiny", "--impls", "full", "lsh1",
                   "--lengths", "64", "--total-tokens", "128", "--target-s", "0",
                   "--out", str(out), "--mirror-dir", str(mirror))  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = read_records(out)
    assert [(r["impl"], r["seq"], r["batch"], r["status"]) for r in records] == [
        ("full", 64, 2, "ok"), ("lsh1", 64, 2, "ok")]  # fmt: skip
    for record in records:
        assert record["gpu"] == "cpu" and record["n_steps"] >= 3
        assert record["seconds_per_step"] == pytest.approx(
            statistics.median(record["step_ms_all"]) / 1e3)  # fmt: skip
        assert record["run_command"].split()[2:4] == ["one", "--impl"]
        assert record["git_commit"] is None or record["git_commit"][:4].isalnum()
    assert records[0]["settings"]["shared_qk"] is False
    assert records[1]["settings"]["n_hashes"] == 1
    markdown = out.with_suffix(".md").read_text()
    assert "| tiny, 128 tokens/step | full | lsh1 |" in markdown
    assert [line for line in markdown.splitlines() if line.startswith("| 64 x 2 |")]
    for folder in (tmp_path, mirror):
        assert (folder / "results.png").read_bytes()[:8] == PNG_MAGIC
    assert (mirror / "results.md").read_text() == markdown


# --- the table ---------------------------------------------------------------------------
def record(impl: str, seq: int, status: str = "ok", seconds: float | None = None, **fields) -> dict:
    base = {"impl": impl, "config": CONFIG, "seq": seq, "batch": 32768 // seq, "status": status,
            "peak_gb": None, "tok_per_s": None, "step_ms": None, "seconds_per_step": None,
            "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "impl_version": "reformer-lab 0.1.0",
            "timestamp": "2026-11-23T06:00:00+00:00", "command": "python run.py sweep",
            "message": None if status == "ok" else f"why {impl} {seq}"}  # fmt: skip
    if seconds is not None:
        base.update(step_ms=1e3 * seconds, seconds_per_step=seconds, tok_per_s=32768 / seconds)
    return {**base, **fields}


def test_render_writes_one_row_per_length_and_one_column_per_impl(tmp_path: Path) -> None:
    results = tmp_path / "2026-11-23-nvidia-h100.jsonl"
    write_records(results, [
        record("lsh1", 1024, seconds=9.0),  # superseded below: the newest line per key wins
        record("full", 1024, seconds=0.1), record("full", 4096, seconds=0.25),
        record("full", 32768, "oom"),
        record("lsh1", 1024, seconds=0.2), record("lsh1", 4096, seconds=0.21),
        record("lsh1", 32768, seconds=0.2),
        record("lsh2", 1024, seconds=0.3), record("lsh2", 4096, "error"),
        record("lsh2", 32768, "timeout", step_ms_all=[12300.0, 12400.0]),
        record("lsh4", 1024, "timeout", cut_by_budget=True),
        record("lsh8", 1024, "skipped"),
    ])  # fmt: skip
    md_path, png_path = render(results)
    lines = md_path.read_text().splitlines()
    start = lines.index(f"| {CONFIG} | full | lsh1 | lsh2 | lsh4 | lsh8 |")
    assert lines[start + 1] == "|---|---|---|---|---|---|"
    assert lines[start + 2 : start + 5] == [
        "| 1K x 32 | 0.1 | 0.2 | 0.3 | cut (total budget) | skipped |",
        "| 4K x 8 | 0.25 | 0.21 | error |  |  |",
        "| 32K x 1 | OOM | 0.2 | timeout (12.4 s per step) |  |  |",
    ]
    assert lines[start + 5] == ""  # exactly one row per length
    assert "- full @ 32K: oom: why full 32768" in lines
    assert "![seconds per step vs length](2026-11-23-nvidia-h100.png)" in lines
    assert png_path.read_bytes()[:8] == PNG_MAGIC


def test_render_refuses_an_empty_results_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no results"):
        render(empty)
