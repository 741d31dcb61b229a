"""Issue 5 studies 2-4 (hash rounds, shared-QK & reversibility, depth) on the Vim-docs corpus:
the corpus builder, each study's sweep composing to exactly the intended models, the depth
figure's equal-step table, and one tiny multirun of text_small through reformer-report."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, compose_train, run_cli

EXPERIMENTS = REPO / "experiments"
STUDIES = {  # study folder -> the sweep overrides its README and the device script use
    "hash_rounds": "attention=full,lsh1,lsh2,lsh4,lsh8",
    "shared_qk_reversible": "attention=full model.shared_qk=true,false model.reversible=true,false",
    "depth": "model.depth=1,2,4,8,12",
}
VIM_DOC = Path("/usr/share/vim/vim90/doc")


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


corpus = load_script(EXPERIMENTS / "corpus" / "build_corpus.py")
depth_plot = load_script(EXPERIMENTS / "depth" / "plot.py")


# --- the corpus ------------------------------------------------------------------------------


def make_source(root: Path) -> tuple[Path, bytes]:
    """A doc folder with three .txt files (written out of order) and two that must be left out."""
    source = root / "doc"
    (source / "sub").mkdir(parents=True)
    files = {"usr_01.txt": b"usr one\n", "Intro.txt": b"\xc3\xa9 intro\n", "api.txt": b"api\n"}
    for name in ("usr_01.txt", "api.txt", "Intro.txt"):
        (source / name).write_bytes(files[name])
    (source / "tags").write_bytes(b"not prose\n")
    (source / "sub" / "deep.txt").write_bytes(b"not at the top level\n")
    expected = files["Intro.txt"] + files["api.txt"] + files["usr_01.txt"]  # code-point order
    return source, expected


def test_corpus_is_the_sorted_txt_files_byte_for_byte_with_their_sha256(tmp_path: Path) -> None:
    source, expected = make_source(tmp_path)
    out, manifest = tmp_path / "data" / "vimdoc.txt", tmp_path / "vimdoc.json"
    record = corpus.build(source, out, manifest)
    assert out.read_bytes() == expected
    recorded = json.loads(manifest.read_text())
    assert recorded == record
    assert recorded["files"] == ["Intro.txt", "api.txt", "usr_01.txt"]
    assert (recorded["n_files"], recorded["n_bytes"]) == (3, len(expected))
    assert recorded["sha256"] == hashlib.sha256(expected).hexdigest()
    assert sorted(p.name for p in out.parent.iterdir()) == ["vimdoc.txt"]  # no temp file left


def test_corpus_equals_what_data_text_file_reads_from_the_folder(tmp_path: Path) -> None:
    from reformer_lab.data.text_file import corpus_files

    source = tmp_path / "doc"
    source.mkdir()
    for i, name in enumerate(["b.txt", "a.txt", "B.txt", "a_b.txt"]):
        (source / name).write_bytes(bytes(range(i, 200 + i)))
    out = tmp_path / "corpus.txt"
    corpus.build(source, out, tmp_path / "m.json")
    assert out.read_bytes() == b"".join(p.read_bytes() for p in corpus_files(source))


def test_missing_source_is_refused_with_how_to_install_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, manifest = tmp_path / "data" / "vimdoc.txt", tmp_path / "vimdoc.json"
    argv = ["--source", str(tmp_path / "nope"), "--out", str(out), "--manifest", str(manifest)]
    assert corpus.main(argv) == 1
    error = capsys.readouterr().err
    assert "nope does not exist" in error and "apt-get install vim-runtime" in error
    assert not out.exists() and not manifest.exists() and not out.parent.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(corpus.CorpusError, match=r"holds no \*\.txt files"):
        corpus.build(tmp_path / "empty", out, manifest)


def test_a_failed_build_leaves_no_partial_file_and_the_old_corpus_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, expected = make_source(tmp_path)
    out, manifest = tmp_path / "data" / "vimdoc.txt", tmp_path / "vimdoc.json"
    corpus.build(source, out, manifest)
    before = manifest.read_text()
    real_read = corpus.read_file

    def fail_on_second(path: Path) -> bytes:
        if path.name == "api.txt":
            raise OSError("disk went away")
        return real_read(path)

    monkeypatch.setattr(corpus, "read_file", fail_on_second)
    with pytest.raises(OSError, match="disk went away"):
        corpus.build(source, out, manifest, overwrite=True)
    assert out.read_bytes() == expected and manifest.read_text() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["vimdoc.txt"]


def test_a_rebuild_with_other_bytes_is_refused_unless_overwrite(tmp_path: Path) -> None:
    source, expected = make_source(tmp_path)
    out, manifest = tmp_path / "data" / "vimdoc.txt", tmp_path / "vimdoc.json"
    corpus.build(source, out, manifest)
    (source / "api.txt").write_bytes(b"api, a newer version\n")
    with pytest.raises(corpus.CorpusError, match=r"differs from .*pass --overwrite"):
        corpus.build(source, out, manifest)
    assert out.read_bytes() == expected
    assert json.loads(manifest.read_text())["sha256"] == hashlib.sha256(expected).hexdigest()
    record = corpus.build(source, out, manifest, overwrite=True)
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert out.read_bytes() != expected


@pytest.mark.skipif(not VIM_DOC.is_dir(), reason="vim-runtime is not installed here")
def test_the_committed_manifest_is_what_this_machine_builds(tmp_path: Path) -> None:
    committed = json.loads((EXPERIMENTS / "corpus" / "vimdoc.json").read_text())
    manifest = tmp_path / "vimdoc.json"
    manifest.write_text(json.dumps(committed))
    record = corpus.build(VIM_DOC, tmp_path / "vimdoc.txt", manifest)  # refuses if it differs
    assert record["files"] == committed["files"]
    assert committed["n_files"] == len(committed["files"])


# --- the sweeps compose to the intended models -----------------------------------------------


def expand(sweep: str) -> list[list[str]]:
    """Hydra's own parser: one override list per job of `sweep`, in the launcher's order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(sweep.split())
    choices = [
        [f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [f"{o.key_or_group}={o.get_value_element_as_str()}"]
        for o in parsed
    ]
    return [list(job) for job in itertools.product(*choices)]


def composed_models(experiment: str, sweep: str, tmp_path: Path) -> list:
    from reformer_lab.cli.validate import validate_run

    models = []
    for job in expand(sweep):
        cfg = compose_train(["~local", f"experiment={experiment}", *job], output_dir=tmp_path)
        models.append(validate_run(cfg).model_config)
    return models


BASE = {"dim": 256, "heads": 4, "ff_mult": 4, "bucket_size": 64, "max_seq_len": 4096,
        "vocab_size": 256, "causal": True, "dropout": 0.0}  # fmt: skip


def settings(model, keys=("attention", "n_hashes", "shared_qk", "reversible", "depth")) -> tuple:
    return tuple(getattr(model, k) for k in keys)


@pytest.mark.usefixtures("reset_hydra")
def test_hash_rounds_sweep_is_full_and_lsh_1_2_4_8_on_the_3_layer_base(tmp_path: Path) -> None:
    models = composed_models("text_small", STUDIES["hash_rounds"], tmp_path)
    got = [
        settings(m, ("attention", "n_hashes", "depth", "shared_qk", "reversible")) for m in models
    ]
    assert got[0][0] == "full" and got[0][2:] == (3, True, True)
    assert got[1:] == [("lsh", n, 3, True, True) for n in (1, 2, 4, 8)]
    for model in models:
        assert {k: getattr(model, k) for k in BASE} == BASE


@pytest.mark.usefixtures("reset_hydra")
def test_shared_qk_reversible_sweep_is_the_4_combinations_under_full_attention(
    tmp_path: Path,
) -> None:
    models = composed_models("text_small", STUDIES["shared_qk_reversible"], tmp_path)
    got = [settings(m, ("attention", "shared_qk", "reversible", "depth")) for m in models]
    expected = [("full", s, r, 3) for s in (True, False) for r in (True, False)]
    assert got == expected


@pytest.mark.usefixtures("reset_hydra")
def test_depth_sweep_is_1_to_12_layers_of_lsh4(tmp_path: Path) -> None:
    models = composed_models("text_small", STUDIES["depth"], tmp_path)
    assert [settings(m) for m in models] == [("lsh", 4, True, True, d) for d in (1, 2, 4, 8, 12)]


@pytest.mark.usefixtures("reset_hydra")
def test_text_small_base_run_settings(tmp_path: Path) -> None:
    cfg = compose_train(["~local", "experiment=text_small"], output_dir=tmp_path)
    assert cfg.data.path == "data/vimdoc.txt" and cfg.data.seq_len == 4096
    assert (cfg.data.batch_size, cfg.data.num_workers) == (8, 1)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "auto"
    assert cfg.trainer.max_time == "00:00:05:30" and cfg.trainer.val_check_interval == 200
    assert cfg.trainer.check_val_every_n_epoch is None
    assert list(cfg.logger) == ["csv"] and cfg.eval_n_hashes is None
    assert cfg.callbacks.sample_logger is None and cfg.callbacks.fit_check.search is False
    assert cfg.scheduler.warmup_steps == 200


@pytest.mark.usefixtures("reset_hydra")
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_paper_scale_command_composes_on_enwik8_3layer(study: str, tmp_path: Path) -> None:
    models = composed_models("enwik8_3layer", STUDIES[study], tmp_path)
    assert len(models) == len(expand(STUDIES[study]))
    for model in models:
        assert (model.dim, model.max_seq_len, model.heads) == (1024, 65536, 8)
    if study != "depth":
        assert {m.depth for m in models} == {3}


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_readme_and_device_script_run_the_tested_sweeps(study: str) -> None:
    readme = (EXPERIMENTS / study / "README.md").read_text()
    assert f"experiment=text_small {STUDIES[study]}" in readme
    assert f"experiment=enwik8_3layer {STUDIES[study]}" in readme
    assert "## Results" in readme and "## Differences from the paper" in readme
    assert STUDIES[study] in (EXPERIMENTS / "text_studies_device.sh").read_text()


# --- the depth figure compares at equal steps ------------------------------------------------


def test_depth_table_reads_every_run_at_the_last_step_all_of_them_reached(tmp_path: Path) -> None:
    sweep = tmp_path / "depth"
    curves = {1: {199: 3.0, 399: 2.5, 599: 2.2}, 4: {199: 3.1, 399: 2.4}, 12: {199: 3.3, 299: 2.9}}
    for job, (depth, curve) in enumerate(curves.items()):
        folder = sweep / str(job)
        (folder / "csv").mkdir(parents=True)
        rows = ["step,train/loss,val/bits_per_char", "5,4.0,"]
        rows += [f"{step},,{value}" for step, value in curve.items()]
        (folder / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
        result = {"status": "ok", "overrides": ["experiment=text_small", f"model.depth={depth}"],
                  "metrics": {"test/bits_per_char": 2.0 + depth / 10}}  # fmt: skip
        (folder / "result.json").write_text(json.dumps(result))
    common, rows = depth_plot.depth_rows(sweep)
    assert common == 299  # depth 12 validated last at 299
    assert [(r["depth"], r["val_at_common"], r["steps"]) for r in rows] == [
        (1, 3.0, 599),  # the value at 199: 399 is past the common step
        (4, 3.1, 399),
        (12, 2.9, 299),
    ]
    assert depth_plot.main([str(sweep)]) == 0
    assert "| 12 | 2.9000 | 299 | 3.2000 |" in (sweep / "depth.md").read_text()
    assert (sweep / "depth-val_bits_per_char.png").read_bytes()[:4] == b"\x89PNG"


# --- one tiny multirun of text_small, end to end ---------------------------------------------

TINY_TEXT = [
    "~local",
    "trainer=cpu",
    "data.seq_len=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "model.dim=32",
    "model.heads=2",
    "model.depth=1",
    "model.bucket_size=16",
    "trainer.max_steps=3",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
]


@pytest.mark.slow
def test_tiny_text_small_multirun_then_reformer_report_draws_the_curves(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"".join(f"line {i}: the reformer hashes {i * 7 % 13}\n".encode()
                              for i in range(400)))  # fmt: skip
    sweep = tmp_path / "sweep"
    done = run_cli(
        ["reformer_lab.cli.train", "-m", "experiment=text_small", "attention=full,lsh2",
         f"data.path={text}", f"hydra.sweep.dir={sweep}", *TINY_TEXT],
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for job, (attention, n_hashes) in enumerate([("full", 4), ("lsh", 2)]):
        result = json.loads((sweep / str(job) / "result.json").read_text())
        assert result["status"] == "ok", result["reason"]
        assert result["global_step"] == 3
        assert (result["model"]["attention"], result["model"]["n_hashes"]) == (attention, n_hashes)
        assert result["metrics"]["test/bits_per_char"] > 0
    reported = run_cli(
        ["reformer_lab.cli.report", str(sweep), "--metric", "test/bits_per_char"], cwd=tmp_path
    )
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert "2 runs, 2 ok, 0 failed" in (sweep / "report.md").read_text()
    for png in ("curves-val_bits_per_char.png", "report-test_bits_per_char.png"):
        assert (sweep / png).read_bytes()[:4] == b"\x89PNG", png


# --- equal-step tables of the text studies (experiments/text_study_table.py) ------------------

study_table = load_script(EXPERIMENTS / "text_study_table.py")


def write_job(sweep: Path, job: int, overrides: list[str], csv_rows: dict[int, float],
              status: str = "ok", global_step: int | None = None) -> None:  # fmt: skip
    """A job folder as the trainer leaves it: result.json and csv/metrics.csv (csv steps)."""
    folder = sweep / str(job)
    (folder / "csv").mkdir(parents=True)
    lines = ["step,train/loss,val/bits_per_char", "9,4.0,"]
    lines += [f"{step},,{value}" for step, value in csv_rows.items()]
    (folder / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    result = {"status": status, "reason": None if status == "ok" else "boom",
              "overrides": ["experiment=text_small", *overrides], "global_step": global_step,
              "metrics": {"test/bits_per_char": 2.0 + job}}  # fmt: skip
    (folder / "result.json").write_text(json.dumps(result))


def test_study_table_compares_runs_at_the_steps_all_of_them_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = tmp_path / "sweep"
    write_job(
        sweep, 0, ["attention=full"], {199: 3.4, 399: 2.4, 599: 1.5, 799: 1.2}, global_step=800
    )
    write_job(sweep, 1, ["attention=lsh1"], {199: 3.5, 399: 3.3, 457: 3.2}, global_step=458)
    write_job(sweep, 2, ["attention=lsh2"], {199: 3.6}, status="failed")
    runs = study_table.load_runs(sweep)  # the failed job is left out, and said so on stderr
    assert "left out job 2 (failed: boom)" in capsys.readouterr().err
    assert [run["label"] for run in runs] == ["attention=full", "attention=lsh1"]
    assert runs[1]["curve"] == {200: 3.5, 400: 3.3, 458: 3.2}  # csv step s = optimizer step s+1
    assert study_table.common_steps(runs, every=200) == [200, 400]  # 458 is lsh1's alone
    assert study_table.common_steps(runs, every=400) == [400]
    assert study_table.first_below(runs[0]["curve"], 2.5) == 400
    assert study_table.first_below(runs[1]["curve"], 2.5) is None

    assert study_table.main([str(sweep), "--every", "200"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == [
        "| run | steps | last val | test | first val < 2.5 | 200 | 400 |",
        "|---|---|---|---|---|---|---|",
        "| attention=full | 800 | 1.200 | 2.000 | 400 | 3.400 | 2.400 |",
        "| attention=lsh1 | 458 | 3.200 | 3.000 | not reached | 3.500 | 3.300 |",
        "",
    ]
    assert study_table.main([str(sweep), "--steps", "800", "400", "--below", "3.4"]) == 0
    rows = capsys.readouterr().out.splitlines()[4:6]
    assert rows == ["| attention=full | 800 | 1.200 | 2.000 | 400 | 2.400 | 1.200 |",
                    "| attention=lsh1 | 458 | 3.200 | 3.000 | 400 | 3.300 | - |"]  # fmt: skip


def test_study_table_refuses_bad_input_with_what_to_change(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert study_table.main([str(tmp_path / "nope")]) == 1
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert study_table.main([str(tmp_path / "empty")]) == 1
    assert "holds no result.json" in capsys.readouterr().err
    sweep = tmp_path / "no_csv"
    write_job(sweep, 0, ["attention=full"], {})
    assert study_table.main([str(sweep)]) == 1
    assert (
        "no val/bits_per_char in csv/metrics.csv (run with logger=csv)" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        study_table.main([str(sweep), "--steps", "0"])
    assert "0 is not a positive number of steps" in capsys.readouterr().err


README_TABLES = {  # study -> the arguments its README's headline table was printed with
    "hash_rounds": [],
    "shared_qk_reversible": [
        "--steps",
        "400",
        "800",
        "1200",
        "1600",
        "2000",
        "2400",
        "3000",
        "3800",
    ],
    "depth": ["--steps", "400", "800", "1200", "1600", "2000", "2400", "3200", "4400"],
}


@pytest.mark.parametrize("study", sorted(README_TABLES))
def test_readme_results_tables_are_what_the_committed_runs_give(
    study: str, capsys: pytest.CaptureFixture
) -> None:
    results = EXPERIMENTS / study / "results"
    headline = results / "run-2026-11-23-7.5min"
    assert study_table.main([str(headline), *README_TABLES[study]]) == 0
    table = capsys.readouterr().out.split("\n", 2)[2].rstrip()
    assert table in (EXPERIMENTS / study / "README.md").read_text()
    steps = ["--steps", "400", "800", "1200", "1600", "2000"]
    assert study_table.main([str(results / "run-2026-11-23-5.5min"), *steps]) == 0
    table = capsys.readouterr().out.split("\n", 2)[2].rstrip()
    assert table in (results / "README.md").read_text()
