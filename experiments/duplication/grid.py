"""Table 2 of the Reformer paper (sec 2.1) from one training multirun: every trained variant
evaluated on the test split with full attention and with LSH-8, 4, 2, 1.

    reformer-train -m experiment=duplication_paper attention=full,lsh1,lsh2,lsh4
    python experiments/duplication/grid.py outputs/multirun/train/<date>/<time> \
        [--out experiments/duplication/results] [--overwrite] [--no-plot] [EVAL_OVERRIDE ...]
    python experiments/duplication/grid.py --from-evals <sweep> [--out ...] [--overwrite]

Each job's trained variant (full, lsh1, lsh2, lsh4) is read from its stored config
(`.hydra/config.yaml`: model.attention, model.n_hashes); its best checkpoint is used (the last
when no best was kept). Each cell is what
`reformer-eval ckpt_path=<checkpoint> splits=[test] attention=<full|lsh8|lsh4|lsh2|lsh1>` gives:
the same composition and function (`reformer_lab.cli.evaluate.evaluate`, a real Lightning Trainer) runs here;
EVAL_OVERRIDEs (e.g. `trainer.accelerator=cpu`, `+data.batch_size=16`) go to every evaluation.
Every eval.json lands in `<sweep>/table2_eval/<trained>/<evaluated>/`.

Written into --out, each file atomically: results.json ({trained: {evaluated: accuracy %}},
exactly Table 2's rows and columns), meta.json (GPU, torch, per-run training time and steps,
evaluation times), results.md and results-heatmap.png (table2.py; --no-plot skips the PNG).
Refused before any evaluation: a folder with no finished job, a Table 2 variant with no
finished job or with two, a job without a checkpoint, results already in --out (--overwrite).

--from-evals evaluates nothing: it rebuilds results.json, results.md and the heat map from the
20 eval.json files an earlier run left in `<sweep>/table2_eval/` (a sweep copied back from the
GPU machine without its checkpoints), cell for cell what that run wrote. It keeps the meta.json
in --out (the evaluation times are not in eval.json) after checking that it names the same
checkpoints. Refused: a missing cell, a cell evaluated with other attention than its folder
says, a row whose cells name different checkpoints or a job of another trained variant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from table2 import (  # noqa: E402
    EVALUATED,
    HEATMAP_FILE,
    META_FILE,
    RESULTS_FILE,
    TABLE_FILE,
    TRAINED,
    check_grid,
    render,
    write_text,
)

DEFAULT_OUT = HERE / "results"
EVAL_FOLDER = "table2_eval"


class GridError(ValueError):
    """A sweep folder or output folder grid.py cannot work with; the message says why."""


def variant_of(job: Path) -> str | None:
    """'full' or 'lsh<k>' from the job's stored config; None for kinds Table 2 does not have."""
    from omegaconf import OmegaConf

    stored = job / ".hydra" / "config.yaml"
    if not stored.is_file():
        raise GridError(f"{job} has no {stored.relative_to(job)}: not a reformer-train job")
    model = OmegaConf.load(stored).model
    if model.attention == "full":
        return "full"
    if model.attention == "lsh":
        return f"lsh{model.n_hashes}"
    return None  # local attention or a per-layer list


def checkpoint_of(job: Path, outcome: dict[str, Any]) -> Path:
    """The best checkpoint, else the last; looked up by name in <job>/checkpoints if the stored
    path does not exist (a sweep folder copied elsewhere)."""
    stored = outcome.get("checkpoints") or {}
    for kind in ("best", "last"):
        if not stored.get(kind):
            continue
        for candidate in (Path(stored[kind]), job / "checkpoints" / Path(stored[kind]).name):
            if candidate.is_file():
                return candidate
    raise GridError(f"job {job.name} finished but none of its checkpoints {stored} exists")


def find_runs(sweep: Path) -> dict[str, dict[str, Any]]:
    """{variant: {"folder", "outcome", "checkpoint"}} for Table 2's four trained variants."""
    if not sweep.is_dir():
        raise GridError(f"{sweep} is not a folder: give a reformer-train -m sweep folder")
    jobs = sorted(p.parent for p in sweep.glob("*/result.json"))
    finished: dict[str, list[Path]] = {}
    failed: dict[str, list[str]] = {}
    for job in jobs:
        outcome = json.loads((job / "result.json").read_text())
        variant = variant_of(job)
        if outcome.get("status") == "ok":
            finished.setdefault(str(variant), []).append(job)
        else:
            failed.setdefault(str(variant), []).append(f"job {job.name}: {outcome.get('reason')}")
    if not any(finished.values()):
        raise GridError(
            f"{sweep} holds no finished job ({len(jobs)} result.json, none with status ok): "
            f"run `reformer-train -m experiment=duplication_paper attention=full,lsh1,lsh2,lsh4`"
        )
    runs = {}
    for variant in TRAINED:
        found = finished.get(variant, [])
        if not found:
            why = "; ".join(failed.get(variant, [])) or "no job trained it"
            raise GridError(
                f"{sweep}: trained variant {variant} is missing ({why}); Table 2 needs "
                f"{', '.join(TRAINED)} (attention=full,lsh1,lsh2,lsh4)"
            )
        if len(found) > 1:
            raise GridError(
                f"{sweep}: trained variant {variant} finished in several jobs "
                f"({', '.join(p.name for p in found)}): keep one per variant"
            )
        outcome = json.loads((found[0] / "result.json").read_text())
        runs[variant] = {
            "folder": found[0],
            "outcome": outcome,
            "checkpoint": checkpoint_of(found[0], outcome),
        }
    return runs


def eval_config(evaluated: str, overrides: list[str]) -> Any:
    """conf/eval.yaml as `reformer-eval attention=<evaluated> splits=[test] <overrides>` composes it
    (`evaluated` is a conf/attention option: full, lsh8, lsh4, lsh2, lsh1)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("reformer_lab.conf", version_base="1.3"):
        return compose(
            "eval",
            overrides=[
                f"attention={evaluated}",
                "ckpt_path=set-below",
                "splits=[test]",
                "trainer.enable_progress_bar=false",
                "paths.output_dir=set-below",
                *overrides,
            ],
        )


def evaluate_grid(
    runs: dict[str, dict[str, Any]], sweep: Path, overrides: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Every (trained, evaluated) cell through reformer-eval's `evaluate`; accuracies in %."""
    from reformer_lab.cli.evaluate import evaluate

    grid: dict[str, dict[str, float]] = {}
    seconds: dict[str, dict[str, float]] = {}
    precision = None
    for trained in TRAINED:
        grid[trained], seconds[trained] = {}, {}
        for evaluated in EVALUATED:
            cfg = eval_config(evaluated, overrides)
            cfg.ckpt_path = str(runs[trained]["checkpoint"])  # set here: a path needs no quoting
            cfg.paths.output_dir = str(sweep / EVAL_FOLDER / trained / evaluated)
            started = time.time()
            result = evaluate(cfg)
            seconds[trained][evaluated] = round(time.time() - started, 2)
            grid[trained][evaluated] = cell_percent(result["metrics"]["test/accuracy"])
            precision = str(result["trainer"].precision)
            print(f"trained {trained}, evaluated {evaluated}: {grid[trained][evaluated]:.2f}%")
    return grid, {"eval_seconds": seconds, "eval_precision": precision}


def cell_percent(accuracy: float) -> float:
    """A test accuracy (fraction) as the grid's cell: percent, rounded to 4 decimals."""
    return round(100.0 * accuracy, 4)


def evaluated_with(cell: dict[str, Any]) -> str | None:
    """'full' or 'lsh<k>' from an eval.json's attention and n_hashes (as variant_of reads a job)."""
    if cell.get("attention") == "full":
        return "full"
    if cell.get("attention") == "lsh":
        return f"lsh{cell.get('n_hashes')}"
    return None


def grid_from_evals(sweep: Path) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """({trained: {evaluated: accuracy %}}, {trained: checkpoint}) from the eval.json files in
    <sweep>/table2_eval/<trained>/<evaluated>/, checked against their folder names and jobs."""
    if not (sweep / EVAL_FOLDER).is_dir():
        raise GridError(
            f"{sweep} has no {EVAL_FOLDER}/ folder: give a sweep that grid.py has evaluated"
        )
    paths = {(t, e): sweep / EVAL_FOLDER / t / e / "eval.json" for t in TRAINED for e in EVALUATED}
    missing = [f"{t}/{e}" for (t, e), path in paths.items() if not path.is_file()]
    if missing:
        raise GridError(
            f"{sweep / EVAL_FOLDER}: no eval.json for {', '.join(missing)}: all "
            f"{len(paths)} cells are needed (rerun grid.py on the sweep with its checkpoints)"
        )
    grid: dict[str, dict[str, float]] = {t: {} for t in TRAINED}
    checkpoints: dict[str, str] = {}
    for (trained, evaluated), path in paths.items():
        cell = json.loads(path.read_text())
        if evaluated_with(cell) != evaluated:
            raise GridError(
                f"{path} was evaluated with attention={cell.get('attention')} "
                f"n_hashes={cell.get('n_hashes')}, not {evaluated} as its folder says"
            )
        checkpoint = checkpoints.setdefault(trained, cell["checkpoint"])
        if cell["checkpoint"] != checkpoint:
            raise GridError(
                f"{sweep / EVAL_FOLDER / trained}: its cells evaluated different checkpoints "
                f"({checkpoint} and {cell['checkpoint']} in {evaluated}/)"
            )
        grid[trained][evaluated] = cell_percent(cell["results"]["test"]["test/accuracy"])
    for trained, checkpoint in checkpoints.items():
        job = sweep / Path(checkpoint).parent.parent.name  # <job>/checkpoints/<name>.ckpt
        if not (job / "result.json").is_file() or variant_of(job) != trained:
            raise GridError(
                f"{sweep / EVAL_FOLDER / trained} evaluated {checkpoint}, which is not a "
                f"checkpoint of a job of this sweep that trained {trained}"
            )
    return grid, checkpoints


def check_meta_matches(out: Path, checkpoints: dict[str, str]) -> None:
    """meta.json in `out`, when there, describes the runs whose checkpoints were evaluated."""
    path = out / META_FILE
    if not path.is_file():
        return
    meta = json.loads(path.read_text())
    for trained, checkpoint in checkpoints.items():
        run = meta.get("runs", {}).get(trained, {})
        described = str(
            Path(meta.get("sweep", "")) / str(run.get("job")) / str(run.get("checkpoint"))
        )
        if described != checkpoint:
            raise GridError(
                f"{path} describes another sweep: its {trained} run is {described}, the "
                f"eval.json files evaluated {checkpoint} (move meta.json away or --out elsewhere)"
            )


def meta_for(runs: dict[str, dict[str, Any]], sweep: Path, timing: dict[str, Any]) -> dict:
    import lightning
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    per_run = {}
    for variant, run in runs.items():
        outcome = run["outcome"]
        per_run[variant] = {
            "job": run["folder"].name,
            "overrides": outcome.get("overrides"),
            "global_step": outcome.get("global_step"),
            "train_wall_seconds": outcome.get("wall_seconds"),
            "checkpoint": os.path.relpath(run["checkpoint"], run["folder"]),
            "train_val_accuracy": outcome.get("metrics", {}).get("val/accuracy"),
            "train_test_accuracy": outcome.get("metrics", {}).get("test/accuracy"),
        }
    seconds = timing["eval_seconds"]
    return {
        "sweep": str(sweep),
        "gpu": gpu,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join(["python", *sys.argv]),
        "data": _data_settings(runs["full"]["folder"]),
        "runs": per_run,
        "eval_precision": timing["eval_precision"],
        "eval_seconds": seconds,
        "eval_seconds_total": round(sum(sum(row.values()) for row in seconds.values()), 1),
    }


def _data_settings(job: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    data = OmegaConf.load(job / ".hydra" / "config.yaml").data
    return {key: data.get(key) for key in ("vocab_size", "w_len", "n_test", "batch_size")}


def check_output(
    out: Path,
    overwrite: bool,
    names: tuple[str, ...] = (RESULTS_FILE, META_FILE, TABLE_FILE, HEATMAP_FILE),
) -> None:
    existing = [out / name for name in names]
    existing = [p for p in existing if p.exists()]
    if existing and not overwrite:
        raise GridError(
            f"{', '.join(str(p) for p in existing)} already exist: pass --overwrite to replace "
            f"them, or --out a new folder"
        )


def check_overrides(overrides: list[str]) -> None:
    """The evaluation overrides compose (Hydra's own message if not), before any evaluation."""
    from hydra.errors import HydraException

    try:
        eval_config(EVALUATED[0], overrides)
    except HydraException as error:
        raise GridError(f"reformer-eval overrides {overrides}: {error}") from None


def check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise GridError(
            "matplotlib is not installed (the heat map needs it): install it, or pass --no-plot "
            "and render later with `python experiments/duplication/table2.py <out>`"
        ) from None


def run_from_evals(args: argparse.Namespace) -> list[Path]:
    """--from-evals: results.json, results.md and the heat map from the sweep's eval.json files."""
    if args.overrides:
        raise GridError(
            f"--from-evals evaluates nothing: drop the reformer-eval overrides {args.overrides}"
        )
    sweep, out = args.sweep.resolve(), args.out
    if not sweep.is_dir():
        raise GridError(f"{sweep} is not a folder: give a sweep folder grid.py has evaluated")
    check_output(out, args.overwrite, names=(RESULTS_FILE, TABLE_FILE, HEATMAP_FILE))
    if not args.no_plot:
        check_matplotlib()
    grid, checkpoints = grid_from_evals(sweep)
    check_grid(grid)
    check_meta_matches(out, checkpoints)
    write_text(out / RESULTS_FILE, json.dumps(grid, indent=2) + "\n")
    return [out / RESULTS_FILE, *render(out, plot=not args.no_plot)]


def run(args: argparse.Namespace) -> list[Path]:
    if args.from_evals:
        return run_from_evals(args)
    sweep, out = args.sweep.resolve(), args.out
    runs = find_runs(sweep)
    check_output(out, args.overwrite)
    if not args.no_plot:
        check_matplotlib()
    check_overrides(args.overrides)
    grid, timing = evaluate_grid(runs, sweep, args.overrides)
    check_grid(grid)
    meta = meta_for(runs, sweep, timing)
    write_text(out / RESULTS_FILE, json.dumps(grid, indent=2) + "\n")
    write_text(out / META_FILE, json.dumps(meta, indent=2, default=str) + "\n")
    return [out / RESULTS_FILE, out / META_FILE, *render(out, plot=not args.no_plot)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a reformer-train -m sweep folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    parser.add_argument("--no-plot", action="store_true", help="skip the heat map PNG")
    parser.add_argument(
        "--from-evals",
        action="store_true",
        help=f"rebuild from <sweep>/{EVAL_FOLDER}/*/*/eval.json instead of evaluating",
    )
    parser.add_argument("overrides", nargs="*", help="reformer-eval overrides for every cell")
    args = parser.parse_intermixed_args(argv)
    try:
        written = run(args)
    except GridError as error:
        raise SystemExit(f"grid.py: error: {error}") from None
    print("\n".join(str(p) for p in written))
    print((args.out / TABLE_FILE).read_text())


if __name__ == "__main__":
    main()
