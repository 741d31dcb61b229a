"""The benchmark renderer: results file -> markdown table + two PNG plots, on the CPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from reformer_bench.records import write_records  # noqa: E402
from reformer_bench.render import cell, length_label, rate_label, render  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(impl: str, config: str, seq: int, status: str = "ok", **fields) -> dict:
    base = {"impl": impl, "config": config, "seq": seq, "status": status, "peak_gb": None,
            "tok_per_s": None, "step_ms": None, "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0",
            "impl_version": f"{impl} 1.0", "timestamp": "2026-11-23T06:00:00+00:00",
            "command": "python run.py matrix", "message": None if status == "ok" else "why"}  # fmt: skip
    return {**base, **fields}


def ok(impl: str, config: str, seq: int, peak_gb: float, tok_per_s: float) -> dict:
    return record(impl, config, seq, peak_gb=peak_gb, tok_per_s=tok_per_s,
                  step_ms=1e3 * seq / tok_per_s)  # fmt: skip


def test_render_writes_the_issue_style_table_and_two_pngs(tmp_path: Path) -> None:
    results = tmp_path / "2026-11-23-nvidia-h100.jsonl"
    write_records(results, [
        ok("hf", "base", 65536, 13.5, 114_000),
        ok("hf", "base", 65536, 99.0, 1.0),  # superseded below: the newest line per key wins
        ok("hf", "base", 65536, 13.5, 114_000),
        record("lucidrains", "base", 65536, "oom", message="CUDA out of memory"),
        record("lucidrains", "base", 262144, "skipped", message="after oom at seq 65536"),
        ok("hf", "base", 262144, 53.4, 114_000),
        record("full-ckpt", "base", 1048576, "timeout", step_ms_all=[25_300.0], cut_by_budget=False),
        record("full", "base", 1048576, "timeout", cut_by_budget=True),
        ok("reformer-lab", "tiny", 65536, 0.18, 3_210_000),
        ok("full", "tiny", 65536, 0.59, 1_710_000),
    ])  # fmt: skip
    written = render(results)
    markdown_path = tmp_path / "2026-11-23-nvidia-h100.md"
    assert written == [markdown_path, tmp_path / "2026-11-23-nvidia-h100-memory.png",
                       tmp_path / "2026-11-23-nvidia-h100-throughput.png"]  # fmt: skip
    for png in written[1:]:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    lines = markdown_path.read_text().splitlines()
    base_at = lines.index("| base | reformer-lab | full-ckpt | full | hf | lucidrains |")
    assert lines[base_at + 1 : base_at + 5] == [
        "|---|---|---|---|---|---|",
        "| 64K |  |  |  | 13.5 / 114K | OOM |",
        "| 256K |  |  |  | 53.4 / 114K | skipped |",
        "| 1M |  | timeout (25.3 s per step) | cut (total budget) |  |  |",
    ]
    tiny_at = lines.index("| tiny | reformer-lab | full-ckpt | full | hf | lucidrains |")
    assert lines[tiny_at + 2] == "| 64K | 0.18 / 3.21M |  | 0.59 / 1.71M |  |  |"
    assert "- lucidrains @ 256K: skipped: after oom at seq 65536" in lines
    assert "  - `python run.py matrix`" in lines
    assert not list(tmp_path.glob(".*tmp*"))  # temp files were renamed into place


def test_labels() -> None:
    assert [length_label(n) for n in (4096, 16384, 262144, 1 << 20, 256, 3000)] == [
        "4K", "16K", "256K", "1M", "256", "3000"]  # fmt: skip
    assert [rate_label(r) for r in (1_620_000, 114_000, 81_400, 999.0)] == [
        "1.62M", "114K", "81.4K", "999"]  # fmt: skip
    assert cell(record("full", "base", 4096, "timeout", warmup_ms=800.0)) == "timeout"
    assert cell(record("full", "base", 4096, "timeout", phase="warm-up", phase_s=41.04)) == (
        "timeout (warm-up > 41 s)"
    )
    assert cell(record("full", "base", 4096, "timeout", phase="build", phase_s=41.0)) == "timeout"
    assert cell(record("full", "base", 4096, "error")) == "error"
    assert cell(None) == ""


def test_render_reports_the_bad_line(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(ok("hf", "base", 4096, 1.0, 2.0)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:2:"):
        render(results)
    assert not (tmp_path / "r.md").exists()


def test_render_cli_refuses_a_missing_file(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_render_cli", BENCH_DIR / "render.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main([str(tmp_path / "missing.jsonl")])
