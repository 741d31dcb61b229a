"""Results file -> markdown tables (rows = length, columns = implementation, "peak GB / tok/s")
and two log-log plots (peak memory vs length, tokens per second vs length), next to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .records import latest_per_key, read_records
from .settings import IMPLS, SIZES

Key = tuple[str, str, int]


def render(jsonl: Path) -> list[Path]:
    """Write <stem>.md, <stem>-memory.png and <stem>-throughput.png; return their paths."""
    records = read_records(jsonl)
    if not records:
        raise ValueError(f"{jsonl} holds no results: run the matrix first")
    latest = latest_per_key(records)
    md_path = jsonl.with_suffix(".md")
    memory_png = jsonl.with_name(f"{jsonl.stem}-memory.png")
    speed_png = jsonl.with_name(f"{jsonl.stem}-throughput.png")
    write_text(md_path, markdown(latest, jsonl.name, memory_png.name, speed_png.name))
    _plot(latest, "peak_gb", "peak memory (GB = 1e9 B)", memory_png)
    _plot(latest, "tok_per_s", "tokens per second", speed_png)
    return [md_path, memory_png, speed_png]


def markdown(
    latest: dict[Key, dict[str, Any]], source: str, memory_png: str, speed_png: str
) -> str:
    rows = list(latest.values())
    lines = [
        "# One training step: peak GB / tokens per second",
        "",
        "Forward + backward of a causal byte-level LM, batch 1, bf16 autocast, one warm-up step, "
        "then the median of >= 3 timed steps (CUDA events; host clock in the CPU test mode). "
        "Peak GB = `torch.cuda.max_memory_allocated()` over the timed steps / 1e9 (for "
        "reformer-lab-graph and -offload, whose replays allocate nothing the allocator sees, over the "
        "warm-up's eager step and capture too); tok/s = "
        "length / median step time. OOM = out of memory; 'skipped' lengths follow an OOM, a "
        "timeout or an error at a shorter length.",
        "",
        f"- source: `{source}`",
        f"- gpu: {joined(r['gpu'] for r in rows)}; torch {joined(r['torch'] for r in rows)}",
        f"- runs: {min(r['timestamp'] for r in rows)} to {max(r['timestamp'] for r in rows)}; "
        f"git commit {joined(r.get('git_commit') for r in rows)}",
    ]
    for impl in _impls(latest):
        versions = joined(r["impl_version"] for r in rows if r["impl"] == impl)
        lines.append(f"- {impl}: {versions}")
    lines += ["- command(s):", *(f"  - `{c}`" for c in dict.fromkeys(r["command"] for r in rows))]
    for config in _configs(latest):
        lines += ["", *table(latest, config)]
        notes = [note(r) for r in rows if r["config"] == config and r["status"] != "ok"]
        if notes:
            lines += ["", *notes]
    lines += ["", f"![peak memory]({memory_png})", "", f"![tokens per second]({speed_png})", ""]
    return "\n".join(lines)


def table(latest: dict[Key, dict[str, Any]], config: str) -> list[str]:
    impls = _impls(latest)
    seqs = sorted({seq for (_, c, seq) in latest if c == config})
    lines = [f"| {config} | {' | '.join(impls)} |", "|---" * (len(impls) + 1) + "|"]
    for seq in seqs:
        cells = [cell(latest.get((impl, config, seq))) for impl in impls]
        lines.append(f"| {length_label(seq)} | {' | '.join(cells)} |")
    return lines


def cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return ""
    status = record["status"]
    if status == "ok":
        peak = "—" if record["peak_gb"] is None else f"{record['peak_gb']:.3g}"
        return f"{peak} / {rate_label(record['tok_per_s'])}"
    if status == "oom":
        return "OOM"
    if status == "timeout":
        if record.get("cut_by_budget"):
            return "cut (total budget)"
        steps = record.get("step_ms_all") or []
        if steps:  # some timed steps finished, too few for a median
            return f"timeout ({max(steps) / 1e3:.3g} s per step)"
        phase = record.get("phase") or ""
        if record.get("phase_s") and phase.startswith(("warm-up", "timed step")):
            return f"timeout ({phase} > {record['phase_s']:.3g} s)"
        return "timeout"
    return status  # "error" or "skipped"; the note under the table says why


def length_label(seq: int) -> str:
    for size, suffix in ((1 << 20, "M"), (1 << 10, "K")):
        if seq >= size and seq % size == 0:
            return f"{seq // size}{suffix}"
    return str(seq)


def rate_label(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.3g}M"
    if rate >= 1e3:
        return f"{rate / 1e3:.3g}K"
    return f"{rate:.3g}"


def note(record: dict[str, Any]) -> str:
    """The line under a table that says why a run did not end "ok"."""
    message = (record["message"] or "").strip().splitlines()
    return (f"- {record['impl']} @ {length_label(record['seq'])}: {record['status']}: "
            f"{message[-1][:200] if message else ''}")  # fmt: skip


def _impls(latest: dict[Key, dict[str, Any]]) -> list[str]:
    present = {impl for (impl, _, _) in latest}
    return [i for i in IMPLS if i in present] + sorted(present - set(IMPLS))


def _configs(latest: dict[Key, dict[str, Any]]) -> list[str]:
    present = {config for (_, config, _) in latest}
    return [c for c in SIZES if c in present] + sorted(present - set(SIZES))


def joined(values: Any) -> str:
    """Distinct values, in order of first appearance, comma-joined ("n/a" if none)."""
    return ", ".join(str(v) for v in dict.fromkeys(v for v in values if v is not None)) or "n/a"


def _plot(latest: dict[Key, dict[str, Any]], field: str, label: str, path: Path) -> None:
    configs = _configs(latest)
    figure, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4.5), squeeze=False)
    for ax, config in zip(axes[0], configs):
        for impl in _impls(latest):
            runs = sorted((r for (i, c, _), r in latest.items() if i == impl and c == config),
                          key=lambda r: r["seq"])  # fmt: skip
            points = [(r["seq"], r[field]) for r in runs if r["status"] == "ok" and r[field]]
            failed = [r["seq"] for r in runs if r["status"] in ("oom", "timeout")]
            if not points and not failed:
                continue
            xs, ys = zip(*points) if points else ((), ())
            color = f"C{_impls(latest).index(impl)}"  # the same colour in every panel
            ax.plot(xs, ys, marker="o", label=impl, color=color)
            for seq in failed:  # a cross on the x axis where the implementation stopped
                ax.plot([seq], [0.0], marker="x", markersize=10, color=color,
                        transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
        ax.set_xscale("log", base=2)
        seqs = sorted({seq for (_, c, seq) in latest if c == config})
        ax.set_xticks(seqs, [length_label(seq) for seq in seqs])
        ax.minorticks_off()
        if ax.lines and any(y > 0 for line in ax.lines for y in line.get_ydata()):
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, f"no {field} values (CPU run?)", ha="center",
                    transform=ax.transAxes)  # fmt: skip
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.set_title(f"{config}: {label} (x on the axis: OOM or timeout)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    save_figure(figure, path)


def save_figure(figure: plt.Figure, path: Path) -> None:
    """Lay out, write as PNG (temp file, then rename) and close `figure`."""
    figure.tight_layout()
    temp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(temp, dpi=120, format="png")
    plt.close(figure)
    os.replace(temp, path)


def write_text(path: Path, text: str) -> None:
    """Replace `path` by `text` (temp file, then rename: never half-written)."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)
