"""Records file -> markdown table (rows = length, columns = implementation, seconds per step)
and a plot of seconds per step against length (log x, one line per implementation), beside it.

Cells that did not run say why, in the benchmark's words (`reformer_bench.render.cell`): OOM,
timeout (with the step time when some steps finished), cut (total budget), skipped, error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from reformer_bench.records import latest_per_key, read_records
from reformer_bench.render import cell, joined, length_label, note, save_figure, write_text

from .cells import IMPLS

Key = tuple[str, str, int]


def render(jsonl: Path) -> list[Path]:
    """Write <stem>.md and <stem>.png beside the records file; return their paths."""
    records = read_records(jsonl)
    if not records:
        raise ValueError(f"{jsonl} holds no results: run the sweep first")
    latest = latest_per_key(records)
    md_path, png_path = jsonl.with_suffix(".md"), jsonl.with_suffix(".png")
    write_text(md_path, markdown(latest, jsonl.name, png_path.name))
    plot(latest, png_path)
    return [md_path, png_path]


def markdown(latest: dict[Key, dict[str, Any]], source: str, png: str) -> str:
    rows = list(latest.values())
    lines = [
        "# Seconds per training step vs length, batch x length fixed (Reformer Fig. 5 right)",
        "",
        "One training step (forward + loss + backward + Adam step, bf16 autocast) of "
        "reformer-lab's ReformerLM with the named attention in every layer; one warm-up step, "
        "then the median of >= 3 timed steps (CUDA events; host clock on the CPU). Each cell "
        "ran in its own process. Rows: length x batch.",
        "",
        f"- source: `{source}`",
        f"- gpu: {joined(r['gpu'] for r in rows)}; torch {joined(r['torch'] for r in rows)}",
        f"- runs: {min(r['timestamp'] for r in rows)} to {max(r['timestamp'] for r in rows)}; "
        f"git commit {joined(r.get('git_commit') for r in rows)}",
        f"- model: {joined(r['impl_version'] for r in rows)}",
        "- command(s):", *(f"  - `{c}`" for c in dict.fromkeys(r["command"] for r in rows)),
    ]  # fmt: skip
    for config in _configs(latest):
        lines += ["", *table(latest, config)]
        notes = [note(r) for r in rows if r["config"] == config and r["status"] != "ok"]
        if notes:
            lines += ["", *notes]
    lines += ["", f"![seconds per step vs length]({png})", ""]
    return "\n".join(lines)


def table(latest: dict[Key, dict[str, Any]], config: str) -> list[str]:
    """Rows = lengths (shortest first), columns = implementations, cells = seconds per step."""
    impls = _impls(latest)
    runs = {(impl, seq): r for (impl, c, seq), r in latest.items() if c == config}
    seqs = sorted({seq for (_, seq) in runs})
    lines = [f"| {config} | {' | '.join(impls)} |", "|---" * (len(impls) + 1) + "|"]
    for seq in seqs:
        batches = {r["batch"] for (_, s), r in runs.items() if s == seq}
        row = [seconds_cell(runs.get((impl, seq))) for impl in impls]
        batch = f" x {batches.pop()}" if len(batches) == 1 else ""
        lines.append(f"| {length_label(seq)}{batch} | {' | '.join(row)} |")
    return lines


def seconds_cell(record: dict[str, Any] | None) -> str:
    if record is not None and record["status"] == "ok":
        return f"{record['step_ms'] / 1e3:.3g}"
    return cell(record)  # "", OOM, timeout (...), cut (total budget), skipped, error


def plot(latest: dict[Key, dict[str, Any]], path: Path) -> None:
    configs = _configs(latest)
    figure, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4.5), squeeze=False)
    for ax, config in zip(axes[0], configs):
        for index, impl in enumerate(_impls(latest)):
            runs = sorted((r for (i, c, _), r in latest.items() if i == impl and c == config),
                          key=lambda r: r["seq"])  # fmt: skip
            points = [(r["seq"], r["step_ms"] / 1e3) for r in runs if r["status"] == "ok"]
            failed = [r["seq"] for r in runs if r["status"] in ("oom", "timeout")]
            if not points and not failed:
                continue
            xs, ys = zip(*points) if points else ((), ())
            ax.plot(xs, ys, marker="o", label=impl, color=f"C{index}")
            for seq in failed:  # a cross on the x axis where a cell ran out of memory or time
                ax.plot([seq], [0.0], marker="x", markersize=10, color=f"C{index}",
                        transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
        seqs = sorted({seq for (_, c, seq) in latest if c == config})
        ax.set_xscale("log", base=2)
        ax.set_xticks(seqs, [length_label(seq) for seq in seqs])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xlabel("sequence length (tokens); batch = tokens per step / length")
        ax.set_ylabel("seconds per training step")
        ax.set_title(f"{config} (x on the axis: OOM or timeout)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    save_figure(figure, path)


def _impls(latest: dict[Key, dict[str, Any]]) -> list[str]:
    present = {impl for (impl, _, _) in latest}
    return [i for i in IMPLS if i in present] + sorted(present - set(IMPLS))


def _configs(latest: dict[Key, dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(config for (_, config, _) in latest))
