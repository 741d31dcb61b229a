"""`reformer-report <sweep or run folder>`: any multirun as a markdown table and PNG plots.

    reformer-report outputs/multirun/train/2026-11-23/10-00-00
    reformer-report outputs/multirun/train/... --metric test/accuracy --out my_report/

Reads every job's `result.json` (status, reason, overrides, final metrics) and, where the run
logged with `logger=csv`, its `csv/metrics.csv`. Writes, into `--out` (default: the folder):
- `report.md`: one row per job (its overrides as columns, then the final metrics; failed jobs
  with their reason);
- `report-<metric>.png`: the headline metric against the override with the most values, one
  line per combination of the other overrides;
- `curves-<metric>.png` (csv logs only): the metric logged every step, one line per job.
Files are written to a temporary name and renamed: never half-written.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"  # as written by cli/run.py
HEADLINE = ("test/accuracy", "test/bits_per_char", "test/bits_per_dim", "test/loss",
            "val/accuracy", "val/bits_per_char", "val/bits_per_dim", "val/loss")  # fmt: skip


class ReportError(ValueError):
    """A folder that holds no run results, or a metric none of them has."""


def load_jobs(folder: Path) -> list[dict[str, Any]]:
    """Every job under `folder` (a sweep) or the folder itself (a single run), in job order."""
    paths = [folder / RESULT_FILE] if (folder / RESULT_FILE).is_file() else []
    paths += sorted(folder.glob(f"*/{RESULT_FILE}"), key=_job_order)
    if not paths:
        raise ReportError(
            f"{folder} holds no {RESULT_FILE}: point reformer-report at a run folder "
            f"(outputs/train/<date>/<time>) or a sweep folder (outputs/multirun/train/<date>/<time>)"
        )
    jobs = []
    for path in paths:
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ReportError(f"{path} is not valid JSON ({error})") from None
        overrides = dict(_split_override(o) for o in result.get("overrides") or [])
        jobs.append({
            "job": path.parent.name if path.parent != folder else folder.name,
            "folder": path.parent,
            "status": result.get("status", "unknown"),
            "reason": result.get("reason"),
            "overrides": overrides,
            "metrics": result.get("metrics") or {},
        })  # fmt: skip
    return jobs


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def _job_order(path: Path) -> tuple[int, str]:
    name = path.parent.name
    return (int(name), name) if name.isdigit() else (1 << 30, name)


def choose_metric(jobs: list[dict[str, Any]], metric: str | None) -> str:
    available = sorted({m for job in jobs for m in job["metrics"]})
    if metric is not None:
        if metric not in available:
            raise ReportError(f"no job has metric {metric!r}; the jobs have: {available}")
        return metric
    for name in HEADLINE:
        if name in available:
            return name
    if not available:
        raise ReportError("no job finished with metrics (every job failed?): nothing to plot")
    return available[0]


def swept_keys(jobs: list[dict[str, Any]]) -> list[str]:
    """Override keys whose value differs between jobs, most values first."""
    keys = sorted({k for job in jobs for k in job["overrides"]})
    varying = [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]
    return sorted(varying, key=lambda k: -len({job["overrides"].get(k) for job in jobs}))


def markdown_table(jobs: list[dict[str, Any]], metric: str) -> str:
    keys = swept_keys(jobs) or sorted({k for job in jobs for k in job["overrides"]})
    metrics = sorted({m for job in jobs for m in job["metrics"]}, key=lambda m: (m != metric, m))
    header = ["job", *keys, "status", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for job in jobs:
        values = [_format(job["metrics"].get(m)) for m in metrics]
        status = job["status"] if job["status"] == "ok" else f"{job['status']}: {job['reason']}"
        cells = [job["job"], *(job["overrides"].get(k, "") for k in keys), status, *values]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def plot_metric(jobs: list[dict[str, Any]], metric: str, path: Path) -> bool:
    """The metric against the most-swept override; False when nothing varies or nothing ran."""
    keys = swept_keys(jobs)
    done = [j for j in jobs if j["status"] == "ok" and _is_number(j["metrics"].get(metric))]
    if not keys or not done:
        return False
    x_key, others = keys[0], keys[1:]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple, list[tuple[str, float]]] = {}
    for job in done:
        label = tuple(f"{k}={job['overrides'].get(k)}" for k in others)
        groups.setdefault(label, []).append((job["overrides"].get(x_key), job["metrics"][metric]))
    numeric_x = all(_is_number_text(x) for pts in groups.values() for x, _ in pts)
    for label, points in sorted(groups.items()):
        points.sort(key=lambda p: float(p[0]) if numeric_x else str(p[0]))
        xs = [float(x) if numeric_x else str(x) for x, _ in points]
        ax.plot(xs, [y for _, y in points], marker="o", label=", ".join(label) or None)
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric)
    if any(label for label in groups):
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_curves(jobs: list[dict[str, Any]], metric: str, path: Path) -> bool:
    """Per-step values from csv logs (train/... every step, val/... per validation)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    keys = swept_keys(jobs)
    for job in jobs:
        steps, values = read_csv_metric(job["folder"], metric)
        if steps:
            ax.plot(steps, values, label=curve_label(job, keys))
            drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.grid(alpha=0.3)
        _save(fig, path)
    plt.close(fig)
    return drawn


def curve_label(job: dict[str, Any], keys: list[str]) -> str:
    """What tells this job's curve apart: the swept overrides only (the ones shared by every
    job would fill the legend), or the job number when nothing was swept."""
    return " ".join(f"{k}={job['overrides'].get(k)}" for k in keys) or f"job {job['job']}"


def read_csv_metric(run_folder: Path, metric: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for path in sorted(run_folder.glob("csv/**/metrics.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if _is_number_text(row.get(metric)) and _is_number_text(row.get("step")):
                    steps.append(int(float(row["step"])))
                    values.append(float(row[metric]))
    return steps, values


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_number_text(value: Any) -> bool:
    try:
        return value not in (None, "") and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    fig.clf()


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def report(folder: Path, out: Path | None = None, metric: str | None = None) -> list[Path]:
    """Writes the report of `folder` into `out` (default: `folder`); returns the files written."""
    jobs = load_jobs(folder)
    out = out or folder
    chosen = choose_metric(jobs, metric)
    slug = chosen.replace("/", "_")
    table = markdown_table(jobs, chosen)
    n_ok = sum(j["status"] == "ok" for j in jobs)
    text = (f"# {folder.name}: {len(jobs)} runs, {n_ok} ok, {len(jobs) - n_ok} failed\n\n"
            f"Made by `reformer-report {folder}`.\n\n{table}")  # fmt: skip
    written = [out / "report.md"]
    if plot_metric(jobs, chosen, out / f"report-{slug}.png"):
        written.append(out / f"report-{slug}.png")
        text += f"\n![{chosen}](report-{slug}.png)\n"
    curve_metric = chosen.replace("test/", "val/") if chosen.startswith("test/") else chosen
    for name in dict.fromkeys(("train/loss", curve_metric)):
        path = out / f"curves-{name.replace('/', '_')}.png"
        if plot_curves(jobs, name, path):
            written.append(path)
            text += f"\n![{name} per step]({path.name})\n"
    _atomic(written[0], lambda tmp: Path(tmp).write_text(text))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="reformer-report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a sweep folder or a single run folder")
    parser.add_argument("--metric", help="headline metric (default: test/accuracy, bits, loss)")
    parser.add_argument("--out", type=Path, help="where to write (default: the folder itself)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"reformer-report: error: {args.folder} is not a folder")
    try:
        written = report(args.folder, args.out, args.metric)
    except ReportError as error:
        raise SystemExit(f"reformer-report: error: {error}") from None
    for path in written:
        print(path)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
