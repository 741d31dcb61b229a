"""Render a benchmark results file into a markdown table and two log-log plots beside it.

    python experiments/benchmarks/render.py experiments/benchmarks/results/<date>-<gpu>.jsonl

writes <stem>.md, <stem>-memory.png and <stem>-throughput.png. Needs only matplotlib (CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reformer_bench.render import render


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("jsonl", type=Path, help="a results file written by run.py matrix")
    args = cli.parse_args(argv)
    if not args.jsonl.is_file():
        raise SystemExit(f"{args.jsonl} does not exist: pass a results .jsonl file")
    try:
        written = render(args.jsonl)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    print("\n".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
