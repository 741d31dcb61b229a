"""Fig 5 (left) of the paper from a depth sweep: bits/char against depth, at equal steps.

    python experiments/depth/plot.py outputs/text_studies/<stamp>/depth

`reformer-report` plots each run's final test bits/char against depth. Under a time cap
(conf/experiment/text_small.yaml: trainer.max_time) deeper runs stop after fewer steps, so
those final numbers mix depth with training length. This script adds what the figure needs:
validation bits/char at the last validation step that *every* run reached (from the csv logs),
next to the final test bits/char and the steps each run took. Writes, into the sweep folder,
`depth.md` (the table) and `depth-val_bits_per_char.png` (both lines against depth); each file
is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from reformer_lab.cli.report import ReportError, load_jobs, read_csv_metric

METRIC = "val/bits_per_char"


def depth_rows(sweep: Path) -> tuple[int, list[dict]]:
    """(common step, one row per finished run sorted by depth); ReportError if none compare."""
    rows = []
    for job in load_jobs(sweep):
        steps, values = read_csv_metric(job["folder"], METRIC)
        depth = job["overrides"].get("model.depth")
        if job["status"] == "ok" and steps and depth is not None:
            rows.append({"depth": int(depth), "curve": dict(zip(steps, values)),
                         "test": job["metrics"].get("test/bits_per_char")})  # fmt: skip
    if not rows:
        raise ReportError(f"{sweep}: no finished run with model.depth and csv {METRIC}")
    common = min(max(row["curve"]) for row in rows)  # the last step every run validated at
    for row in rows:
        row["steps"] = max(row["curve"])
        reached = [s for s in row["curve"] if s <= common]
        row["val_at_common"] = row["curve"][max(reached)]
    return common, sorted(rows, key=lambda row: row["depth"])


def table(common: int, rows: list[dict]) -> str:
    lines = [f"| depth | {METRIC} at step {common} | last validation step | test/bits_per_char |",
             "|---|---|---|---|"]  # fmt: skip
    for row in rows:
        test = "" if row["test"] is None else f"{row['test']:.4f}"
        lines.append(f"| {row['depth']} | {row['val_at_common']:.4f} | {row['steps']} | {test} |")
    return "\n".join(lines) + "\n"


def plot(common: int, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    depths = [row["depth"] for row in rows]
    ax.plot(depths, [row["val_at_common"] for row in rows], marker="o",
            label=f"{METRIC} at step {common} (every run)")  # fmt: skip
    tested = [row for row in rows if row["test"] is not None]
    ax.plot([row["depth"] for row in tested], [row["test"] for row in tested], marker="s",
            linestyle="--", label="test/bits_per_char at each run's end")  # fmt: skip
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("bits per character")
    ax.set_xticks(depths)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)


def atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the depth sweep folder (hydra.sweep.dir)")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        print(f"plot.py: error: {args.sweep} is not a folder", file=sys.stderr)
        return 1
    try:
        common, rows = depth_rows(args.sweep)
    except ReportError as error:
        print(f"plot.py: error: {error}", file=sys.stderr)
        return 1
    text = table(common, rows)
    atomic(args.sweep / "depth.md", lambda tmp: Path(tmp).write_text(text))
    plot(common, rows, args.sweep / "depth-val_bits_per_char.png")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
