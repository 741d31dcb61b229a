"""Validation bits/char at equal training steps for the runs of a text-study sweep (issue 5).

    python experiments/text_study_table.py experiments/hash_rounds/results/run-2026-11-23-7.5min
    python experiments/text_study_table.py <sweep> --steps 400 800 1200 1600 2000 --below 2.5

Studies 2-4 (the paper's Figs. 3, 4 and 5 left; conf/experiment/text_small.yaml) stop every run
at `trainer.max_time`, so runs end at different steps and their final numbers mix the
configuration with training length. This prints, per sweep folder, one markdown row per run:
its swept overrides, the steps it took (`result.json`: global_step), its last validation and
test bits/char, the first step at which validation bits/char fell below `--below` (when the run
left the early unigram/bigram plateau, ~3.2-3.4 bits/char), and validation bits/char at equal
steps: by default every multiple of `--every` that all runs validated at; with `--steps`, the
steps given, "-" where a run stopped before.

Steps are optimizer steps. Lightning's csv logger records a validation run after N optimizer
steps at step N - 1 (the last checkpoint of a run that stopped at global_step 886 is logged at
step 885), so a csv step s is shown here as s + 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from reformer_lab.cli.report import ReportError, load_jobs, read_csv_metric, swept_keys

VAL = "val/bits_per_char"
TEST = "test/bits_per_char"


def load_runs(sweep: Path) -> list[dict]:
    """One dict per finished run: label, steps, test, curve {optimizer step: val bits/char}."""
    jobs = []
    for job in load_jobs(sweep):
        if job["status"] == "ok":
            jobs.append(job)
        else:
            print(f"{sweep}: left out job {job['job']} ({job['status']}: {job['reason']})",
                  file=sys.stderr)  # fmt: skip
    keys = swept_keys(jobs)
    runs = []
    for job in jobs:
        csv_steps, values = read_csv_metric(job["folder"], VAL)
        if not csv_steps:
            raise ReportError(f"{job['folder']}: no {VAL} in csv/metrics.csv (run with logger=csv)")
        result = json.loads((job["folder"] / "result.json").read_text())
        curve = {step + 1: value for step, value in zip(csv_steps, values)}
        runs.append({
            "label": " ".join(f"{k.removeprefix('model.')}={job['overrides'][k]}" for k in keys)
            or job["job"],
            "steps": result.get("global_step", max(curve)),
            "test": job["metrics"].get(TEST),
            "curve": curve,
        })  # fmt: skip
    if not runs:
        raise ReportError(f"{sweep}: no run finished with status ok")
    return runs


def common_steps(runs: list[dict], every: int) -> list[int]:
    """Multiples of `every` at which every run validated, ascending."""
    shared = set.intersection(*(set(run["curve"]) for run in runs))
    return sorted(step for step in shared if step % every == 0)


def first_below(curve: dict[int, float], threshold: float) -> int | None:
    """The first step whose validation value is below `threshold`; None if none is."""
    return next((step for step in sorted(curve) if curve[step] < threshold), None)


def table(runs: list[dict], steps: list[int], below: float) -> str:
    header = ["run", "steps", "last val", "test", f"first val < {below}", *map(str, steps)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        last_val = run["curve"][max(run["curve"])]
        crossed = first_below(run["curve"], below)
        cells = [run["label"], str(run["steps"]), f"{last_val:.3f}", fmt(run["test"]),
                 "not reached" if crossed is None else str(crossed),
                 *(fmt(run["curve"].get(step)) for step in steps)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of steps")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="+", help="sweep folders (hydra.sweep.dir)")
    parser.add_argument("--every", type=positive_int, default=400,
                        help="default columns: the multiples of this all runs reached (400)")  # fmt: skip
    parser.add_argument("--steps", type=positive_int, nargs="+",
                        help="these steps as columns instead, '-' where a run stopped before")  # fmt: skip
    parser.add_argument("--below", type=float, default=2.5,
                        help="threshold of the 'first val <' column, bits/char (2.5)")  # fmt: skip
    args = parser.parse_args(argv)
    missing = [str(sweep) for sweep in args.sweeps if not sweep.is_dir()]
    if missing:
        print(f"text_study_table.py: error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        loaded = [(sweep, load_runs(sweep)) for sweep in args.sweeps]
    except ReportError as error:
        print(f"text_study_table.py: error: {error}", file=sys.stderr)
        return 1
    for sweep, runs in loaded:
        steps = sorted(set(args.steps)) if args.steps else common_steps(runs, args.every)
        print(f"{sweep}: {VAL} at equal optimizer steps\n\n{table(runs, steps, args.below)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
