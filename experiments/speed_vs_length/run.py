"""Reformer Fig. 5 (right): seconds per training step against length at a fixed number of tokens.

    PYTHONPATH=src python experiments/speed_vs_length/run.py sweep          # 30 cells, on the GPU
    PYTHONPATH=src python experiments/speed_vs_length/run.py sweep --impls full lsh4 --lengths 1024 32768
    PYTHONPATH=src python experiments/speed_vs_length/run.py sweep --device cpu --size tiny \
        --impls full lsh1 --lengths 64 128 --total-tokens 256                # CPU test mode

`sweep` runs each (implementation, length) cell in a fresh subprocess (`one`, an internal
command) with batch = total tokens / length, appends JSON lines to
experiments/speed_vs_length/results/<date>-<gpu>.jsonl and renders <stem>.md and <stem>.png
beside it. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]  # git runs here: "-dirty" means src/ or this study changed
sys.path.insert(0, str(REPO / "experiments" / "benchmarks"))  # the harness: reformer_bench

from reformer_bench.commands import check_results_out, git_commit, render_and_mirror  # noqa: E402
from reformer_bench.records import default_results_path, gpu_name  # noqa: E402
from reformer_bench.settings import SIZES  # noqa: E402
from speed_sweep.cells import (  # noqa: E402
    DEFAULT_IMPLS,
    DEFAULT_LENGTHS,
    DEFAULT_TOTAL_TOKENS,
    IMPLS,
    Cell,
    config_label,
    plan_cells,
)

RESULTS_DIR = HERE / "results"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "one":
        return one(args)
    return sweep(args)


def one(args: argparse.Namespace) -> int:
    """Child process: one cell, printed as the last stdout line (prefixed by RESULT_PREFIX)."""
    from reformer_bench.child import report_from_child
    from speed_sweep.step import Timing, measure_cell  # imports torch: only in the child

    timing = Timing(device=args.device, min_steps=args.min_steps, target_s=args.target_s,
                    deadline_unix=args.deadline_unix)  # fmt: skip
    cell = Cell(args.impl, args.seq, args.batch)
    report_from_child(args.deadline_unix,
                      lambda progress: measure_cell(cell, SIZES[args.size], timing, progress))  # fmt: skip
    return 0


def sweep(args: argparse.Namespace) -> int:
    """Check everything, then run every cell, then render; bad input stops before any cell."""
    from speed_sweep.sweep import SweepOptions, run_sweep

    try:
        cells = plan_cells(args.impls, args.lengths, args.total_tokens, SIZES[args.size])
    except ValueError as error:
        raise SystemExit(f"refusing to start: {error}") from error
    if args.budget_s <= 0 or args.cell_timeout_s <= 0 or args.grace_s < 0 or args.target_s < 0:
        raise SystemExit("--budget-s and --cell-timeout-s must be positive, --grace-s and "
                         "--target-s not negative (seconds)")  # fmt: skip
    gpu = gpu_name(args.device)
    out = args.out or default_results_path(args.results_dir, gpu)
    check_results_out(out)
    if args.mirror_dir is not None:
        args.mirror_dir.mkdir(parents=True, exist_ok=True)
    options = SweepOptions(
        cells=cells, size=args.size, config=config_label(args.size, args.total_tokens),
        total_tokens=args.total_tokens, device=args.device, out=out, gpu=gpu,
        command=shlex.join(["python", *sys.argv]), run_script=Path(__file__).resolve(),
        budget_s=args.budget_s, cell_timeout_s=args.cell_timeout_s, grace_s=args.grace_s,
        min_steps=args.min_steps, target_s=args.target_s, mirror_dir=args.mirror_dir,
        git_commit=git_commit(REPO, ["src", str(HERE.relative_to(REPO))]),
    )  # fmt: skip
    print(f"results -> {out}  ({len(cells)} cells, {args.total_tokens} tokens per step, "
          f"budget {args.budget_s:.0f} s, {args.cell_timeout_s:.0f} s per cell)", flush=True)  # fmt: skip
    run_sweep(options, log=lambda line: print(line, flush=True))
    if args.no_render:
        return 0
    from speed_sweep.table import render

    render_and_mirror(render, out, args.mirror_dir)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    s = commands.add_parser("sweep", help="every (impl, length) cell, one subprocess each")
    s.add_argument("--impls", nargs="+", choices=IMPLS, default=list(DEFAULT_IMPLS),
                   help="full = separate Q/K through flash SDPA; full-shared-qk = the paper's "
                        "shared-QK full attention; lshN = LSH with N hash rounds")  # fmt: skip
    s.add_argument("--lengths", nargs="+", type=int, default=list(DEFAULT_LENGTHS))
    s.add_argument("--total-tokens", type=int, default=DEFAULT_TOTAL_TOKENS,
                   help="tokens per step = batch x length; every length must divide it")  # fmt: skip
    s.add_argument("--size", choices=list(SIZES), default="base",
                   help="model size of experiments/benchmarks (base: d 512, 6 layers, 8 heads)")  # fmt: skip
    s.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    s.add_argument("--budget-s", type=float, default=290.0, help="time for the whole sweep")
    s.add_argument("--cell-timeout-s", type=float, default=60.0, help="time for one cell")
    s.add_argument("--grace-s", type=float, default=5.0,
                   help="a frozen cell's process is killed this long after its deadline")  # fmt: skip
    s.add_argument("--min-steps", type=int, default=3, choices=range(3, 101), metavar="N>=3")
    s.add_argument("--target-s", type=float, default=1.0,
                   help="keep timing steps (up to 10) until this much step time is measured")  # fmt: skip
    s.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    s.add_argument(
        "--out", type=Path, help="results file (default <results-dir>/<date>-<gpu>.jsonl)"
    )
    s.add_argument("--mirror-dir", type=Path, help="also copy the results here after every cell")
    s.add_argument("--no-render", action="store_true", help="skip the markdown table and plot")

    o = commands.add_parser("one", help="internal: one cell in this process")
    o.add_argument("--impl", choices=IMPLS, required=True)
    o.add_argument("--size", choices=list(SIZES), required=True)
    o.add_argument("--seq", type=int, required=True)
    o.add_argument("--batch", type=int, required=True)
    o.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    o.add_argument("--min-steps", type=int, default=3)
    o.add_argument("--target-s", type=float, default=1.0)
    o.add_argument("--deadline-unix", type=float, default=float("inf"))
    return top


if __name__ == "__main__":
    sys.exit(main())
