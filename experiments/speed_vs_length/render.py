"""Render a speed-vs-length records file into a markdown table and a plot beside it.

    python experiments/speed_vs_length/render.py experiments/speed_vs_length/results/<date>-<gpu>.jsonl

writes <stem>.md (seconds per step: rows = length, columns = implementation) and <stem>.png
(seconds per step against length, log x). Needs only matplotlib (CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "experiments" / "benchmarks"))  # reformer_bench

from reformer_bench.commands import render_main  # noqa: E402
from speed_sweep.table import render  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return render_main(render, __doc__, "run.py sweep", argv)


if __name__ == "__main__":
    sys.exit(main())
