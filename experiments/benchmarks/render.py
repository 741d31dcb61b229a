"""Render a benchmark results file into a markdown table and two log-log plots beside it.

    python experiments/benchmarks/render.py experiments/benchmarks/results/<date>-<gpu>.jsonl

writes <stem>.md, <stem>-memory.png and <stem>-throughput.png. Needs only matplotlib (CPU).
"""

from __future__ import annotations

import sys

from reformer_bench.commands import render_main
from reformer_bench.render import render


def main(argv: list[str] | None = None) -> int:
    return render_main(render, __doc__, "run.py matrix", argv)


if __name__ == "__main__":
    sys.exit(main())
