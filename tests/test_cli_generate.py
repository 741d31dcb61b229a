"""reformer-generate end to end on tiny checkpoints trained here (tests/test_lit_sample_logger.py
trains them once per session): text equals `ReformerLM.generate` on the same prompt bytes,
prompt files, seeded sampling, the PNG grid of an image model, and every bad input reported
before a model is built (exit code 1, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from reformer_lab.cli.generate import check_request, generate_samples
from reformer_lab.cli.validate import InvalidRunConfig
from reformer_lab.data.images import planar_to_raster
from reformer_lab.lit import ReformerLitModule
from reformer_lab.lit.callbacks.samples import GRID_GAP, PREFIX_FILL, bytes_to_text
from tests.conftest import run_cli
from tests.test_lit_sample_logger import CIFAR_SIDE, cifar_test_images, trained_run

pytestmark = pytest.mark.usefixtures("reset_hydra")
GENERATE = "reformer_lab.cli.generate"


@pytest.fixture
def text_ckpt(tmp_path_factory) -> Path:
    return trained_run("text_csv", tmp_path_factory) / "checkpoints" / "last.ckpt"


@pytest.fixture
def image_ckpt(tmp_path_factory) -> Path:
    return trained_run("image_wandb", tmp_path_factory) / "checkpoints" / "last.ckpt"


def compose_generate(overrides: list[str], output_dir: Path):
    from hydra import compose, initialize_config_module

    with initialize_config_module("reformer_lab.conf", version_base="1.3"):
        return compose(
            "generate", overrides=["~local", *overrides, f"paths.output_dir={output_dir}"]
        )


def reference(ckpt: Path, prompt: bytes, new: int, num_samples: int = 1, **sampling) -> list[str]:
    """What `ReformerLM.generate` gives for these prompt bytes, decoded."""
    module = ReformerLitModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    tokens = torch.tensor([list(prompt)] * num_samples)  # (S, N)
    out = module.model.generate(tokens, new, **sampling)  # (S, N + new)
    return [bytes_to_text(row) for row in out]


def test_greedy_text_is_deterministic_and_equals_model_generate(
    text_ckpt: Path, tmp_path: Path, capsys
) -> None:
    common = [f"ckpt_path={text_ckpt}", 'prompt="the cat "', "temperature=0", "max_new_tokens=24"]
    generate_samples(compose_generate([*common, f"out={tmp_path / 'a.txt'}"], tmp_path))
    shown = capsys.readouterr().out
    generate_samples(compose_generate([*common, f"out={tmp_path / 'b.txt'}"], tmp_path))
    (expected,) = reference(text_ckpt, b"the cat ", 24, temperature=0.0)
    assert (tmp_path / "a.txt").read_text() == expected + "\n" == shown
    assert (tmp_path / "b.txt").read_text() == expected + "\n"


def test_a_text_prompt_becomes_its_utf8_bytes(text_ckpt: Path, tmp_path: Path, capsys) -> None:
    prompt = "héllo wörld → "
    cfg = compose_generate(
        [f"ckpt_path={text_ckpt}", f'prompt="{prompt}"', "temperature=0", "max_new_tokens=8"],
        tmp_path,
    )
    assert check_request(cfg).prompts[0].tolist() == list(prompt.encode("utf-8"))
    generate_samples(cfg)
    assert capsys.readouterr().out.startswith(prompt)


def test_a_prompt_file_and_seeded_samples_equal_model_generate(
    text_ckpt: Path, tmp_path: Path, capsys
) -> None:
    data = b"sat on a mat\n"
    (tmp_path / "prompt.txt").write_bytes(data)
    overrides = [
        f"ckpt_path={text_ckpt}",
        f"prompt_file={tmp_path / 'prompt.txt'}",
        "max_new_tokens=16",
        "num_samples=3",
        "top_k=20",
        "seed=5",
    ]
    generate_samples(compose_generate(overrides, tmp_path))
    shown = capsys.readouterr().out
    generator = torch.Generator().manual_seed(5)
    expected = reference(text_ckpt, data, 16, 3, temperature=1.0, top_k=20, generator=generator)
    assert shown == "".join(f"--- sample {i} ---\n{t}\n" for i, t in enumerate(expected))
    assert len(set(expected)) > 1  # three different samples of one prompt


def test_an_image_model_writes_a_grid_of_completed_test_images(
    image_ckpt: Path, tmp_path: Path
) -> None:
    rows = 30  # the model completes the last 2 pixel rows
    out = tmp_path / "grid.png"
    overrides = [f"ckpt_path={image_ckpt}", f"image_prefix_rows={rows}", "num_samples=2"]
    result = generate_samples(
        compose_generate([*overrides, "temperature=0", f"out={out}"], tmp_path)
    )
    assert result["new_tokens_per_sample"] == 2 * CIFAR_SIDE * 3

    grid = np.round(matplotlib.image.imread(out)[..., :3] * 255).astype(np.uint8)
    side, step = CIFAR_SIDE, CIFAR_SIDE + GRID_GAP
    assert grid.shape == (2 * step - GRID_GAP, 3 * step - GRID_GAP, 3)
    tests = planar_to_raster(cifar_test_images(), side, side).reshape(-1, side, side, 3)
    for r in range(2):
        prefix, sample, original = (
            grid[r * step : r * step + side, c * step : c * step + side] for c in range(3)
        )
        assert np.array_equal(original, tests[r])  # the r-th test image
        assert (
            np.array_equal(prefix[:rows], tests[r][:rows]) and (prefix[rows:] == PREFIX_FILL).all()
        )
        assert np.array_equal(sample[:rows], tests[r][:rows])


@pytest.fixture
def non_causal_ckpt(text_ckpt: Path, tmp_path: Path) -> Path:
    stored = torch.load(text_ckpt, map_location="cpu", weights_only=False)
    stored["hyper_parameters"]["model"]["causal"] = False
    torch.save(stored, tmp_path / "bidirectional.ckpt")
    return tmp_path / "bidirectional.ckpt"


BAD_INPUTS = {
    "missing checkpoint": (["ckpt_path={tmp}/nope.ckpt", "prompt=x"], r"nope\.ckpt is not a file"),
    "no prompt": (["ckpt_path={text}"], "no prompt: give prompt="),
    "prompt and prompt_file": (
        ["ckpt_path={text}", "prompt=x", "prompt_file={text}"],
        "prompt and prompt_file are both set",
    ),
    "prompt too long": (
        ["ckpt_path={text}", f"prompt={'a' * 57}", "max_new_tokens=8"],
        "prompt is 57 bytes but the model takes max_seq_len=64 positions, so with "
        "max_new_tokens=8 the prompt may have at most 56",
    ),
    "non-causal model": (["ckpt_path={non_causal}", "prompt=x"], "non-causal model"),
    "image prefix on a text model": (
        ["ckpt_path={text}", "image_prefix_rows=4"],
        "image_prefix_rows is for image models, but .* was trained on TextFileDataModule",
    ),
    "text prompt on an image model": (
        ["ckpt_path={image}", "prompt=x"],
        r"is an image model \(Cifar10DataModule\): give image_prefix_rows=N",
    ),
    "prefix as tall as the image": (
        ["ckpt_path={image}", "image_prefix_rows=32"],
        r"image_prefix_rows=32 must be an integer in 0\.\.31",
    ),
    "more images than the test split": (
        ["ckpt_path={image}", "image_prefix_rows=4", "num_samples=4"],
        "num_samples=4 but the test split has 3 images",
    ),
    "bad sampling": (
        ["ckpt_path={text}", "prompt=x", "temperature=-1", "top_p=2"],
        r"temperature=-1 must be a number >= 0 .*; top_p=2 must be a number in \(0, 1\]",
    ),
    "existing out": (["ckpt_path={text}", "prompt=x", "out={text}"], "exists: choose another"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_reported_before_a_model_is_built(
    case: str, text_ckpt, image_ckpt, non_causal_ckpt, tmp_path: Path, monkeypatch
) -> None:
    import reformer_lab.model.lm as lm

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the input was checked")

    monkeypatch.setattr(lm.ReformerLM, "__init__", no_model)
    paths = {"tmp": tmp_path, "text": text_ckpt, "image": image_ckpt, "non_causal": non_causal_ckpt}
    overrides, message = BAD_INPUTS[case]
    cfg = compose_generate([o.format(**paths) for o in overrides], tmp_path)
    with pytest.raises(InvalidRunConfig, match=message):
        generate_samples(cfg)


@pytest.mark.slow
def test_the_command_line_prints_the_text_or_fails_with_exit_code_1(
    text_ckpt: Path, tmp_path: Path
) -> None:
    good = run_cli(
        [GENERATE, "~local", f"ckpt_path={text_ckpt}", 'prompt="the cat "', "temperature=0",
         "max_new_tokens=24", "hydra.run.dir=good"],
        cwd=tmp_path,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr[-3000:]
    (expected,) = reference(text_ckpt, b"the cat ", 24, temperature=0.0)
    assert good.stdout == expected + "\n"
    assert json.loads((tmp_path / "good" / "result.json").read_text())["status"] == "ok"

    bad = run_cli(
        [GENERATE, "~local", f"ckpt_path={tmp_path / 'nope.ckpt'}", "prompt=x",
         "hydra.run.dir=bad"],
        cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "reformer-generate: error: ckpt_path=" in bad.stderr and "is not a file" in bad.stderr
    assert "Traceback" not in bad.stderr
    outcome = json.loads((tmp_path / "bad" / "result.json").read_text())
    assert outcome["status"] == "failed" and "nope.ckpt" in outcome["reason"]


# --- experiments/generation/gpu_bench.py, in its --cpu-smoke mode ------------------------
BENCH = Path(__file__).resolve().parents[1] / "experiments" / "generation" / "gpu_bench.py"


def run_bench(args: list[str], tmp_path: Path) -> tuple[dict, str]:
    """Runs the GPU benchmark script in-process; (its JSON results, its printed output)."""
    import contextlib
    import io
    import runpy

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        namespace = runpy.run_path(str(BENCH), run_name="gpu_bench")
        namespace["main"]([*args, "--json", str(tmp_path / "bench.json")])
    return json.loads((tmp_path / "bench.json").read_text()), out.getvalue()


def check_run(run: dict, impl: str) -> None:
    assert run["impl"] == impl and run["status"] == "ok", run
    assert (run["prompt"], run["new_tokens"], run["max_seq_len"]) == (256, 16, 512)
    assert 0 < run["prompt_s"] < run["total_s"]
    assert run["tokens_per_s"] == pytest.approx(16 / run["total_s"])
    decode_ms = 1e3 * (run["total_s"] - run["prompt_s"]) / 15
    assert run["per_token_ms"] == pytest.approx(decode_ms)


def test_gpu_bench_cpu_smoke_for_reformer_lab(tmp_path: Path) -> None:
    results, shown = run_bench(["--cpu-smoke", "--impls", "reformer-lab"], tmp_path)
    (run,) = results["runs"]
    check_run(run, "reformer-lab")
    assert run["settings"]["axial_shape"] == [16, 32]
    assert results["dtype"] == "bf16" and results["dtype_note"] is None
    table = shown.strip().splitlines()[-3:]  # the markdown table is printed last
    assert table[0].startswith("| impl | prompt | new | dtype | prompt pass (s)")
    assert table[2].startswith("| reformer-lab | 256 | 16 | bf16 |") and table[2].endswith("| ok |")


def test_gpu_bench_cpu_smoke_against_transformers(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    results, shown = run_bench(["--cpu-smoke"], tmp_path)
    lab, hf = results["runs"]
    check_run(lab, "reformer-lab")
    check_run(hf, "hf")
    assert hf["settings"]["num_buckets"] == 2 * 256 // 16  # fixed by transformers' prompt pass
    speedup = lab["tokens_per_s"] / hf["tokens_per_s"]
    assert f"| {speedup:.1f}x |" in shown.strip().splitlines()[-2]  # reformer-lab's row
