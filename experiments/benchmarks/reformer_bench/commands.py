"""What the command lines share: experiments/benchmarks/{run,render}.py and the studies built on
the harness (experiments/speed_vs_length/{run,render}.py): the commit the results came from,
the check of a results file before anything is added to it, rendering (and mirroring) it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from .records import read_records

Render = Callable[[Path], list[Path]]
"""results .jsonl -> the files written beside it."""


def git_commit(repo: Path, paths: Sequence[str]) -> str | None:
    """The repository's short commit, '-dirty' if any of `paths` (relative to `repo`) has
    uncommitted changes; $BENCH_GIT_COMMIT when it is set (the GPU machine's copy of the tree
    can carry a .git older than its files)."""
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", *paths],
                               capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return os.environ.get("BENCH_GIT_COMMIT")
    if head.returncode != 0:
        return os.environ.get("BENCH_GIT_COMMIT")
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def check_results_out(out: Path) -> None:
    """Refuse (SystemExit, saying why) an --out that new results could not be appended to."""
    if out.suffix != ".jsonl":
        raise SystemExit(f"--out {out} must end in .jsonl")
    if out.exists():  # new results are appended to it: it must be a results file already
        try:
            read_records(out)
        except ValueError as error:
            raise SystemExit(
                f"--out {out} is not a results file, refusing to add to it: {error}"
            ) from error


def render_and_mirror(render: Render, out: Path, mirror_dir: Path | None) -> None:
    """Render `out`, copy what was written into `mirror_dir` (if given), print the paths."""
    written = render(out)
    if mirror_dir is not None:
        for path in written:
            temp = mirror_dir / f".{path.name}.tmp"
            temp.write_bytes(path.read_bytes())
            os.replace(temp, mirror_dir / path.name)
    print("rendered " + ", ".join(str(p) for p in written), flush=True)


def render_main(render: Render, doc: str, written_by: str, argv: list[str] | None) -> int:
    """A render.py command: one results .jsonl in, the files written beside it printed."""
    cli = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    cli.add_argument("jsonl", type=Path, help=f"a results file written by {written_by}")
    args = cli.parse_args(argv)
    if not args.jsonl.is_file():
        raise SystemExit(f"{args.jsonl} does not exist: pass a results .jsonl file")
    try:
        written = render(args.jsonl)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    print("\n".join(str(path) for path in written))
    return 0
