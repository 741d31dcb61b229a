"""Benchmark one training step of reformer-lab and its peers (issue 4 §1).

    python experiments/benchmarks/run.py matrix                        # everything, on the GPU
    python experiments/benchmarks/run.py matrix --impls reformer-lab full-ckpt --configs base
    python experiments/benchmarks/run.py matrix --device cpu --seqs 256 --configs tiny  # CPU test mode
    python experiments/benchmarks/run.py default-path                  # where results go

`matrix` runs each (impl, config, seq) in a fresh subprocess (`one`, an internal command),
appends JSON lines to experiments/benchmarks/results/<date>-<gpu>.jsonl and renders the
markdown table and plots next to it. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from reformer_bench.commands import check_results_out, git_commit, render_and_mirror
from reformer_bench.records import default_results_path, gpu_name
from reformer_bench.settings import IMPLS, INJECTABLE, SEQ_LENGTHS, SIZES, check_seq

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]  # git runs here: "-dirty" means src/ changed (recorded as git_commit)
RESULTS_DIR = HERE / "results"
CPU_DEFAULT_SEQS = (256,)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "one":
        return one(args)
    if args.command == "default-path":
        print(default_results_path(args.results_dir, gpu_name(args.device)))
        return 0
    return matrix(args)


def one(args: argparse.Namespace) -> int:
    """Child process: one run, printed as the last stdout line (prefixed by RESULT_PREFIX)."""
    if args.inject == "hang":  # test hook: freeze before anything, watchdog included
        os.kill(os.getpid(), signal.SIGSTOP)
    from reformer_bench.child import report_from_child
    from reformer_bench.measure import RunSpec, run_one  # imports torch: only in the child

    spec = RunSpec(impl=args.impl, config=args.config, seq=args.seq, device=args.device,
                   min_steps=args.min_steps, target_s=args.target_s,
                   deadline_unix=args.deadline_unix, inject=args.inject)  # fmt: skip
    report_from_child(args.deadline_unix, lambda progress: run_one(spec, progress))
    return 0


def matrix(args: argparse.Namespace) -> int:
    from reformer_bench.matrix import MatrixOptions, run_matrix

    seqs = args.seqs or list(SEQ_LENGTHS if args.device == "cuda" else CPU_DEFAULT_SEQS)
    injections = parse_injections(args.inject)
    for config in args.configs:  # every length must suit every config, before any run
        for seq in seqs:
            try:
                check_seq(seq, SIZES[config])
            except ValueError as error:
                raise SystemExit(f"--seqs: {error}") from error
    if args.budget_s <= 0 or args.run_timeout_s <= 0:
        raise SystemExit("--budget-s and --run-timeout-s must be positive numbers of seconds")
    if args.grace_s < 0 or args.target_s < 0:
        raise SystemExit("--grace-s and --target-s must not be negative")
    gpu = gpu_name(args.device)
    out = args.out or default_results_path(args.results_dir, gpu)
    check_results_out(out)
    options = MatrixOptions(
        impls=args.impls, configs=args.configs, seqs=seqs, device=args.device, out=out, gpu=gpu,
        command=shlex.join(["python", *sys.argv]), run_script=Path(__file__).resolve(),
        budget_s=args.budget_s, run_timeout_s=args.run_timeout_s, grace_s=args.grace_s,
        min_steps=args.min_steps, target_s=args.target_s,
        mirror_dir=args.mirror_dir, injections=injections, git_commit=git_commit(REPO, ["src"]),
    )  # fmt: skip
    print(f"results -> {out}  ({len(args.impls) * len(args.configs) * len(seqs)} runs, "
          f"budget {args.budget_s:.0f} s, {args.run_timeout_s:.0f} s per run)", flush=True)  # fmt: skip
    run_matrix(options, log=lambda line: print(line, flush=True))
    if args.no_render:
        return 0
    from reformer_bench.render import render

    render_and_mirror(render, out, args.mirror_dir)
    return 0


def parse_injections(items: list[str]) -> dict[tuple[str, int], str]:
    """'IMPL:SEQ:KIND' -> {(impl, seq): kind}: a test hook that makes that run fail."""
    injections = {}
    for item in items:
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in IMPLS or not parts[1].isdigit() \
                or parts[2] not in INJECTABLE:  # fmt: skip
            raise SystemExit(f"--inject {item!r} must be IMPL:SEQ:KIND with IMPL in {IMPLS}, "
                             f"KIND in {INJECTABLE}")  # fmt: skip
        injections[(parts[0], int(parts[1]))] = parts[2]
    return injections


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    m = commands.add_parser("matrix", help="run many (impl, config, seq), one subprocess each")
    m.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    m.add_argument("--configs", nargs="+", choices=list(SIZES), default=list(SIZES))
    m.add_argument("--seqs", nargs="+", type=int, help=f"default {SEQ_LENGTHS} (cuda), "
                   f"{CPU_DEFAULT_SEQS} (cpu)")  # fmt: skip
    m.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    m.add_argument("--budget-s", type=float, default=480.0, help="total time for the matrix")
    m.add_argument("--run-timeout-s", type=float, default=60.0, help="time for one run")
    m.add_argument(
        "--grace-s",
        type=float,
        default=10.0,
        help="a run's process is killed this long after its deadline",
    )
    m.add_argument("--min-steps", type=int, default=3, choices=range(3, 101), metavar="N>=3")
    m.add_argument(
        "--target-s",
        type=float,
        default=2.0,
        help="keep timing steps (up to 10) until this much step time is measured",
    )
    m.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    m.add_argument(
        "--out", type=Path, help="results file (default <results-dir>/<date>-<gpu>.jsonl)"
    )
    m.add_argument("--mirror-dir", type=Path, help="also copy results here after every run")
    m.add_argument("--no-render", action="store_true", help="skip the markdown table and plots")
    m.add_argument("--inject", action="append", default=[], metavar="IMPL:SEQ:KIND",
                   help=f"test hook: make that run fail ({', '.join(INJECTABLE)})")  # fmt: skip

    o = commands.add_parser("one", help="internal: one run in this process")
    o.add_argument("--impl", choices=IMPLS, required=True)
    o.add_argument("--config", choices=list(SIZES), required=True)
    o.add_argument("--seq", type=int, required=True)
    o.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    o.add_argument("--min-steps", type=int, default=3)
    o.add_argument("--target-s", type=float, default=2.0)
    o.add_argument("--deadline-unix", type=float, default=float("inf"))
    o.add_argument("--inject", choices=INJECTABLE)

    p = commands.add_parser("default-path", help="print where `matrix` would write its results")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return top


if __name__ == "__main__":
    sys.exit(main())
