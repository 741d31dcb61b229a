"""Table 2 of the Reformer paper (sec 2.1, the duplication task) beside a measured grid.

    python experiments/duplication/table2.py experiments/duplication/results

reads `results.json` ({trained: {evaluated: accuracy %}}, written by grid.py) and `meta.json`
when present, and (re)writes `results.md` (the measured table, the paper's, and the difference)
and `results-heatmap.png` (both tables as heat maps). Needs matplotlib for the PNG, nothing
else: run it on any machine to render a grid measured where matplotlib was missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRAINED = ("full", "lsh4", "lsh2", "lsh1")
"""Table 2's rows: the attention the model was trained with."""
EVALUATED = ("full", "lsh8", "lsh4", "lsh2", "lsh1")
"""Table 2's columns: the attention it is evaluated with."""
LABELS = {"full": "full", "lsh8": "LSH-8", "lsh4": "LSH-4", "lsh2": "LSH-2", "lsh1": "LSH-1"}

PAPER: dict[str, dict[str, float]] = {
    "full": {"full": 100.0, "lsh8": 94.8, "lsh4": 92.5, "lsh2": 76.9, "lsh1": 52.5},
    "lsh4": {"full": 0.8, "lsh8": 100.0, "lsh4": 99.9, "lsh2": 99.4, "lsh1": 91.9},
    "lsh2": {"full": 0.8, "lsh8": 100.0, "lsh4": 99.9, "lsh2": 98.1, "lsh1": 86.8},
    "lsh1": {"full": 0.8, "lsh8": 99.9, "lsh4": 99.6, "lsh2": 94.8, "lsh1": 77.9},
}
"""Kitaev, Kaiser, Levskaya (ICLR 2020), Table 2: test accuracy (%) on 0w0w, |w| = 511."""

RESULTS_FILE, META_FILE = "results.json", "meta.json"
TABLE_FILE, HEATMAP_FILE = "results.md", "results-heatmap.png"


def check_grid(grid: dict[str, Any]) -> None:
    """A grid has exactly Table 2's rows and columns, each cell a percentage."""
    if set(grid) != set(TRAINED):
        raise ValueError(f"grid rows {sorted(grid)} must be exactly {sorted(TRAINED)}")
    for trained, row in grid.items():
        if set(row) != set(EVALUATED):
            raise ValueError(f"grid row {trained}: columns {sorted(row)} != {sorted(EVALUATED)}")
        for evaluated, value in row.items():
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 100.0:
                raise ValueError(f"grid[{trained}][{evaluated}]={value!r} is not a percentage")


def markdown_table(grid: dict[str, dict[str, float]], digits: int = 1, signed: bool = False) -> str:
    header = "| train \\ eval | " + " | ".join(LABELS[e] for e in EVALUATED) + " |"
    lines = [header, "|---" * (len(EVALUATED) + 1) + "|"]
    for trained in TRAINED:
        cells = [f"{grid[trained][e]:{'+' if signed else ''}.{digits}f}" for e in EVALUATED]
        lines.append(f"| {LABELS[trained]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def difference(grid: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Measured minus paper, in accuracy points, cell by cell."""
    return {t: {e: grid[t][e] - PAPER[t][e] for e in EVALUATED} for t in TRAINED}


def report_text(grid: dict[str, dict[str, float]], meta: dict[str, Any] | None) -> str:
    data = (meta or {}).get("data") or {}
    task = (
        f"vocabulary {data['vocab_size']}, |w| = {data['w_len']}, {data['n_test']} test sequences"
        if {"vocab_size", "w_len", "n_test"} <= set(data)
        else "settings in meta.json"
    )
    text = [
        "# Duplication task (Table 2): measured vs the paper\n",
        f"Test accuracy (%) on the second copy of w ({task}). Rows: the attention the model was "
        "trained with; columns: the attention it is evaluated with. Written by "
        "`experiments/duplication/grid.py`; the paper: vocabulary 128, |w| = 511.\n",
    ]
    if meta:
        runs = meta.get("runs", {})
        steps = ", ".join(
            f"{LABELS[t]} {runs[t].get('global_step')} steps in {runs[t].get('train_wall_seconds')} s"
            for t in TRAINED
            if t in runs
        )
        text.append(
            f"GPU: {meta.get('gpu')}; torch {meta.get('torch')}; evaluation precision "
            f"{meta.get('eval_precision')}. Training (wall time of each job): "
            f"{steps}. Evaluation: {meta.get('eval_seconds_total')} s for all 20 cells.\n"
        )
    text += [
        "## Measured\n",
        markdown_table(grid, digits=2),
        "\n## Paper (Kitaev et al. 2020, Table 2)\n",
        markdown_table(PAPER),
        "\n## Difference (measured - paper, points)\n",
        markdown_table(difference(grid), signed=True),
        f"\n![Table 2, measured and paper]({HEATMAP_FILE})\n",
    ]
    return "\n".join(text)


def plot_heatmaps(grid: dict[str, dict[str, float]], path: Path) -> None:
    """Two panels, measured and paper, on one 0..100 colour scale, every cell annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for ax, (title, table) in zip(axes, (("measured", grid), ("paper (Table 2)", PAPER))):
        values = [[table[t][e] for e in EVALUATED] for t in TRAINED]  # (4 trained, 5 evaluated)
        image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=100.0)
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                colour = "black" if value > 60 else "white"
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", color=colour)
        ax.set_xticks(range(len(EVALUATED)), [LABELS[e] for e in EVALUATED])
        ax.set_yticks(range(len(TRAINED)), [LABELS[t] for t in TRAINED])
        ax.set_xlabel("evaluated with")
        ax.set_ylabel("trained with")
        ax.set_title(title)
    fig.colorbar(image, ax=axes, label="test accuracy (%)", shrink=0.9)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """`write(temporary name)` in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def render(results_dir: Path, plot: bool = True) -> list[Path]:
    """results.json (+ meta.json) in `results_dir` -> results.md (+ results-heatmap.png)."""
    grid = json.loads((results_dir / RESULTS_FILE).read_text())
    check_grid(grid)
    meta_path = results_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    written = [results_dir / TABLE_FILE]
    write_text(written[0], report_text(grid, meta))
    if plot:
        plot_heatmaps(grid, results_dir / HEATMAP_FILE)
        written.append(results_dir / HEATMAP_FILE)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help=f"a folder holding {RESULTS_FILE}")
    args = parser.parse_args(argv)
    if not (args.results_dir / RESULTS_FILE).is_file():
        raise SystemExit(f"table2.py: error: {args.results_dir} holds no {RESULTS_FILE}")
    try:
        written = render(args.results_dir)
    except (ValueError, json.JSONDecodeError) as error:
        raise SystemExit(f"table2.py: error: {error}") from None
    print("\n".join(str(p) for p in written))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
