"""experiments/duplication (study 1, Table 2): a real `reformer-train -m` multirun of the four
trained variants at a CPU-seconds size, then grid.py over it: the grid's cells are what
reformer-eval gives, the files are complete, and bad sweeps or existing results are refused
before anything is evaluated."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.usefixtures("reset_hydra")
STUDY = REPO / "experiments" / "duplication"
TRAINED = ("full", "lsh4", "lsh2", "lsh1")
EVALUATED = ("full", "lsh8", "lsh4", "lsh2", "lsh1")
TINY_STUDY = [
    "experiment=duplication_paper",
    "attention=full,lsh1,lsh2,lsh4",
    "~local",
    "logger=csv",
    "trainer.accelerator=cpu",
    "model.dim=32",
    "model.heads=2",
    "model.bucket_size=16",
    "data.vocab_size=8",
    "data.w_len=15",  # length 32
    "data.n_train=16",
    "data.n_val=16",
    "data.n_test=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "scheduler.warmup_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "callbacks.sample_logger=null",
]
EVAL_CPU = ["~local", "trainer.accelerator=cpu"]


def load_grid_module():
    spec = importlib.util.spec_from_file_location("duplication_grid", STUDY / "grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def grid():
    return load_grid_module()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """The study's multirun through the real CLI, with `import wandb` failing as on the GPU
    machine (logger=csv must not need it)."""
    root = tmp_path_factory.mktemp("duplication_study")
    blocker = root / "no_wandb" / "wandb"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no wandb on the GPU machine')\n")
    done = run_cli(
        ["reformer_lab.cli.train", "-m", *TINY_STUDY, f"hydra.sweep.dir={root / 'sweep'}"],
        cwd=root,
        env={"PYTHONPATH": f"{blocker.parent}:{REPO}"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((root / "sweep" / "summary.json").read_text())
    assert (summary["n_ok"], summary["n_failed"]) == (4, 0), summary
    return root / "sweep"


@pytest.fixture(scope="module")
def results(grid, sweep: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results")
    grid.main([str(sweep), "--out", str(out), *EVAL_CPU])
    return out


def job_of(sweep: Path, variant: str) -> Path:
    overrides = {"full": "attention=full", "lsh1": "attention=lsh1", "lsh2": "attention=lsh2",
                 "lsh4": "attention=lsh4"}  # fmt: skip
    for job in sorted(sweep.glob("*/result.json")):
        if overrides[variant] in json.loads(job.read_text())["overrides"]:
            return job.parent
    raise AssertionError(f"no job trained {variant}")


@pytest.mark.slow
def test_results_json_has_exactly_table_2s_cells(results: Path) -> None:
    table = json.loads((results / "results.json").read_text())
    assert list(table) == list(TRAINED)
    for row in table.values():
        assert list(row) == list(EVALUATED)
        assert all(isinstance(v, float) and 0.0 <= v <= 100.0 for v in row.values())


@pytest.mark.slow
def test_a_cell_is_what_reformer_eval_gives(results: Path, sweep: Path, tmp_path: Path) -> None:
    """(trained LSH-2, evaluated LSH-4) against the reformer-eval command on the same checkpoint."""
    job = job_of(sweep, "lsh2")
    outcome = json.loads((job / "result.json").read_text())
    assert outcome["model"]["attention"] == "lsh" and outcome["model"]["n_hashes"] == 2
    done = run_cli(
        [
            "reformer_lab.cli.evaluate",
            f"ckpt_path={outcome['checkpoints']['best']}",
            "n_hashes=4",
            "splits=[test]",
            *EVAL_CPU,
            "trainer.enable_progress_bar=false",
            "hydra.run.dir=eval",
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    by_cli = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]["test"]
    table = json.loads((results / "results.json").read_text())
    assert table["lsh2"]["lsh4"] == pytest.approx(100 * by_cli["test/accuracy"], abs=1e-4)

    # Training's own test ran on the same best checkpoint: full attention for the full model,
    # LSH-8 (the experiment's eval_n_hashes) for the LSH models.
    for variant, column in (("full", "full"), ("lsh4", "lsh8"), ("lsh1", "lsh8")):
        trained = json.loads((job_of(sweep, variant) / "result.json").read_text())
        expected = 100 * trained["metrics"]["test/accuracy"]
        assert table[variant][column] == pytest.approx(expected, abs=1e-4), variant


@pytest.mark.slow
def test_meta_table_and_heat_map_are_written(results: Path, sweep: Path) -> None:
    meta = json.loads((results / "meta.json").read_text())
    assert meta["gpu"] == "none (CPU)" and meta["torch"]
    assert set(meta["runs"]) == set(TRAINED)
    for variant, run in meta["runs"].items():
        assert run["global_step"] == 2 and run["train_wall_seconds"] > 0, variant
        assert run["checkpoint"] == "checkpoints/best-step2.ckpt"
    assert {t: set(row) for t, row in meta["eval_seconds"].items()} == {
        t: set(EVALUATED) for t in TRAINED
    }
    assert meta["data"] == {"vocab_size": 8, "w_len": 15, "n_test": 16, "batch_size": 8}
    text = (results / "results.md").read_text()
    assert "| LSH-4 | 0.8 | 100.0 | 99.9 | 99.4 | 91.9 |" in text  # the paper's row
    assert "## Measured" in text and "## Difference (measured - paper, points)" in text
    assert (results / "results-heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evals = sorted(p.relative_to(sweep).parts[1:3] for p in sweep.glob("table2_eval/*/*/eval.json"))
    assert evals == sorted((t, e) for t in TRAINED for e in EVALUATED)


def refuse(grid, monkeypatch, argv: list[str]) -> str:
    """Runs grid.py expecting a refusal before any evaluation; returns the message."""
    import reformer_lab.cli.evaluate

    def no_evaluation(cfg):
        raise AssertionError("grid.py evaluated before refusing")

    monkeypatch.setattr(reformer_lab.cli.evaluate, "evaluate", no_evaluation)
    with pytest.raises(SystemExit) as refused:
        grid.main([*argv, *EVAL_CPU])
    return str(refused.value)


def fake_job(sweep: Path, number: int, attention: str, status: str = "ok", reason=None) -> None:
    """A job folder as reformer-train leaves it (stored config, result.json, a checkpoint)."""
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / "checkpoints").mkdir()
    kind, n_hashes = ("full", 4) if attention == "full" else ("lsh", int(attention[3:]))
    (job / ".hydra" / "config.yaml").write_text(
        f"model:\n  attention: {kind}\n  n_hashes: {n_hashes}\ndata:\n  n_test: 16\n"
    )
    (job / "checkpoints" / "last.ckpt").write_bytes(b"not read before the checks")
    checkpoints = {"best": None, "last": str(job / "checkpoints" / "last.ckpt")}
    (job / "result.json").write_text(
        json.dumps({"status": status, "reason": reason, "checkpoints": checkpoints})
    )


def test_sweeps_without_table_2s_variants_are_refused(grid, monkeypatch, tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "out")]
    assert "is not a folder" in refuse(grid, monkeypatch, [str(tmp_path / "nope"), *out])

    failed = tmp_path / "failed"
    fake_job(failed, 0, "full", status="failed", reason="NaN loss")
    assert "holds no finished job" in refuse(grid, monkeypatch, [str(failed), *out])

    missing = tmp_path / "missing"
    for number, attention in enumerate(("full", "lsh1", "lsh2")):
        fake_job(missing, number, attention)
    fake_job(missing, 3, "lsh4", status="failed", reason="out of memory")
    message = refuse(grid, monkeypatch, [str(missing), *out])
    assert "trained variant lsh4 is missing (job 3: out of memory)" in message

    twice = tmp_path / "twice"
    for number, attention in enumerate(("full", "lsh1", "lsh2", "lsh4", "lsh2")):
        fake_job(twice, number, attention)
    assert "lsh2 finished in several jobs (2, 4)" in refuse(grid, monkeypatch, [str(twice), *out])

    no_checkpoint = tmp_path / "no_checkpoint"
    for number, attention in enumerate(TRAINED):
        fake_job(no_checkpoint, number, attention)
    shutil.rmtree(no_checkpoint / "2" / "checkpoints")
    message = refuse(grid, monkeypatch, [str(no_checkpoint), *out])
    assert "job 2 finished but none of its checkpoints" in message
    assert not (tmp_path / "out").exists()


def test_existing_results_are_kept_without_overwrite(grid, monkeypatch, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for number, attention in enumerate(TRAINED):
        fake_job(sweep, number, attention)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text("kept")
    message = refuse(grid, monkeypatch, [str(sweep), "--out", str(tmp_path / "out")])
    assert "results.json already exist: pass --overwrite" in message
    assert (tmp_path / "out" / "results.json").read_text() == "kept"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json"]

    bad = refuse(grid, monkeypatch, [str(sweep), "--out", str(tmp_path / "new"), "trainer.nope=1"])
    assert "reformer-eval overrides" in bad and "nope" in bad


@pytest.mark.slow
def test_from_evals_rebuilds_exactly_what_grid_wrote(
    grid, results: Path, sweep: Path, tmp_path: Path
) -> None:
    """The eval.json files grid.py left in the sweep give back its results.json and results.md
    byte for byte (meta.json kept from the evaluating run, as copied back from the GPU)."""
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    shutil.copy(results / "meta.json", rebuilt / "meta.json")
    grid.main(["--from-evals", str(sweep), "--out", str(rebuilt)])
    for name in ("results.json", "results.md"):
        assert (rebuilt / name).read_text() == (results / name).read_text(), name
    assert (rebuilt / "results-heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (rebuilt / "meta.json").read_text() == (results / "meta.json").read_text()


def fake_evals(sweep: Path, accuracy: dict[tuple[str, str], float]) -> None:
    """<sweep>/table2_eval/<trained>/<evaluated>/eval.json as reformer-eval writes them, each
    naming its job's checkpoint (jobs numbered in TRAINED order by fake_job)."""
    for number, trained in enumerate(TRAINED):
        for evaluated in EVALUATED:
            kind, n_hashes = ("full", 4) if evaluated == "full" else ("lsh", int(evaluated[3:]))
            cell = sweep / "table2_eval" / trained / evaluated
            cell.mkdir(parents=True)
            (cell / "eval.json").write_text(
                json.dumps(
                    {
                        "checkpoint": str(sweep / str(number) / "checkpoints" / "last.ckpt"),
                        "attention": kind,
                        "n_hashes": n_hashes,
                        "results": {"test": {"test/accuracy": accuracy[trained, evaluated]}},
                    }
                )
            )


def test_from_evals_reads_every_cell_and_refuses_bad_ones(grid, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for number, attention in enumerate(TRAINED):
        fake_job(sweep, number, attention)
    accuracy = {(t, e): 0.5 + 0.01 * i + 0.0123456 for i, (t, e) in
                enumerate((t, e) for t in TRAINED for e in EVALUATED)}  # fmt: skip
    fake_evals(sweep, accuracy)
    argv = ["--from-evals", str(sweep), "--no-plot"]

    grid.main([*argv, "--out", str(tmp_path / "ok")])
    table = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert list(table) == list(TRAINED) and all(list(r) == list(EVALUATED) for r in table.values())
    assert table["full"]["full"] == 51.2346 and table["lsh1"]["lsh1"] == 70.2346
    assert table == {t: {e: round(100 * accuracy[t, e], 4) for e in EVALUATED} for t in TRAINED}
    assert (
        "| LSH-2 | 61.23 | 62.23 | 63.23 | 64.23 | 65.23 |"
        in (tmp_path / "ok" / "results.md").read_text()
    )

    def refused(out: str, *extra: str) -> str:
        """The refusal's message; the --out folder is left exactly as it was."""
        folder = tmp_path / out
        before = {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}
        with pytest.raises(SystemExit) as error:
            grid.main([*argv, "--out", str(folder), *extra])
        after = {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}
        assert after == before, out
        return str(error.value)

    assert "already exist: pass --overwrite" in refused("ok")
    assert "drop the reformer-eval overrides" in refused("o1", "trainer.accelerator=cpu")

    (tmp_path / "o2").mkdir()
    meta = {"sweep": str(tmp_path / "elsewhere"), "runs": {"full": {"job": "0",
            "checkpoint": "checkpoints/last.ckpt"}}}  # fmt: skip
    (tmp_path / "o2" / "meta.json").write_text(json.dumps(meta))
    assert "meta.json describes another sweep: its full run is" in refused("o2")

    swapped = sweep / "table2_eval" / "lsh2"
    (swapped / "lsh8").rename(swapped / "tmp")
    (swapped / "lsh4").rename(swapped / "lsh8")
    (swapped / "tmp").rename(swapped / "lsh4")
    assert "lsh8/eval.json was evaluated with attention=lsh n_hashes=4, not lsh8" in refused("o3")
    (swapped / "lsh8").rename(swapped / "tmp")
    (swapped / "lsh4").rename(swapped / "lsh8")
    (swapped / "tmp").rename(swapped / "lsh4")

    rows = sweep / "table2_eval"
    (rows / "lsh4").rename(rows / "tmp")
    (rows / "lsh1").rename(rows / "lsh4")
    (rows / "tmp").rename(rows / "lsh1")
    assert "which is not a checkpoint of a job of this sweep that trained lsh4" in refused("o4")
    (rows / "lsh4").rename(rows / "tmp")
    (rows / "lsh1").rename(rows / "lsh4")
    (rows / "tmp").rename(rows / "lsh1")

    mixed = rows / "full" / "lsh8" / "eval.json"
    cell = json.loads(mixed.read_text())
    cell["checkpoint"] = str(sweep / "0" / "checkpoints" / "best-step2.ckpt")
    mixed.write_text(json.dumps(cell))
    assert "full: its cells evaluated different checkpoints" in refused("o6")

    (rows / "lsh1" / "lsh2" / "eval.json").unlink()
    assert "no eval.json for lsh1/lsh2: all 20 cells are needed" in refused("o5")

    shutil.rmtree(rows)
    assert "has no table2_eval/ folder: give a sweep that grid.py has evaluated" in refused("o7")
