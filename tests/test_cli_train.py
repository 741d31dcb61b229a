"""reformer-train end to end, in process: every experiment's fast_dev_run, exact resume,
result.json, and reformer-eval on the checkpoint it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from reformer_lab.cli.evaluate import evaluate
from reformer_lab.cli.run import run_recorded
from reformer_lab.cli.train import train
from tests.conftest import CONF_DIR, TINY, compose_train

pytestmark = pytest.mark.usefixtures("reset_hydra")

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SMALL = [
    "~local",
    "debug=[tiny,fast]",
    "trainer.accelerator=cpu",
    "data.num_workers=0",
    "data.pin_memory=false",
]


def data_for(experiment: str, root: Path) -> list[str]:
    """Overrides pointing the experiment's data module at small files in the real formats."""
    from tests.data.conftest import write_cifar_tar, write_enwik8_zip, write_imagenet64

    if experiment.startswith("duplication"):
        return ["data.w_len=31", "data.n_train=4", "data.n_val=2", "data.n_test=2"]
    if experiment.startswith("enwik8"):
        payload = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
        zip_path = write_enwik8_zip(root / "enwik8.zip", payload)
        return [
            f"data.path={zip_path}",
            f"data.expected_size={len(payload)}",
            "data.expected_md5=null",
            "data.download=false",
            "data.seq_len=64",
        ]
    if experiment == "cifar10":
        rng = np.random.default_rng(0)
        images = {
            f"data_batch_{i}": rng.integers(0, 256, (3, 3072), dtype=np.uint8) for i in range(1, 6)
        }
        images["test_batch"] = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        write_cifar_tar(root / "cifar10" / "cifar-10-python.tar.gz", images)
        return [
            f"data.path={root / 'cifar10'}",
            "data.expected_md5=null",
            "data.download=false",
            "data.val_size=2",
        ]
    if experiment == "text_small":
        corpus = root / "corpus.txt"
        corpus.write_bytes(b"the reformer reads long text, byte by byte. " * 200)
        return [f"data.path={corpus}", "data.seq_len=64"]
    if experiment == "imagenet64":
        write_imagenet64(root / "imagenet64", per_file=1, n_val=2)
        return [f"data.path={root / 'imagenet64'}", "data.val_size=2"]
    raise AssertionError(f"add test data for the new experiment {experiment!r}")


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_a_fast_dev_run(experiment: str, tmp_path: Path) -> None:
    cfg = compose_train(
        [*SMALL, f"experiment={experiment}", *data_for(experiment, tmp_path)],
        output_dir=tmp_path / "run",
    )
    result = train(cfg)
    trainer = result["trainer"]
    assert trainer.fast_dev_run and trainer.global_step == 1
    assert np.isfinite(result["metrics"]["train/loss"])
    assert result["model"]["depth"] == 1 and result["model"]["dim"] == 32  # debug=tiny applied


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_resume_from_a_checkpoint_is_exact(tmp_path: Path) -> None:
    """8 steps straight == 4 steps, then 4 more resumed from last.ckpt: same weights, optimizer
    state, LSH step counters and loss (epochs of 4 steps: resume at an epoch boundary)."""
    common = [*TINY, "model.n_hashes=2", "test_after_fit=false"]
    straight = compose_train([*common, "trainer.max_steps=8"], output_dir=tmp_path / "straight")
    result_straight = train(straight)
    first = compose_train([*common, "trainer.max_steps=4"], output_dir=tmp_path / "first")
    train(first)
    resumed = compose_train(
        [
            *common,
            "trainer.max_steps=8",
            f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}",
        ],
        output_dir=tmp_path / "resumed",
    )
    result_resumed = train(resumed)

    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "resumed")
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    assert any("hash_step" in name for name in a["state_dict"])  # the LSH counter is saved
    for sa, sb in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()
    ):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(
            sa["exp_avg_sq"], sb["exp_avg_sq"]
        )
    assert result_straight["metrics"]["val/loss"] == result_resumed["metrics"]["val/loss"]
    # the run that was resumed from was not touched
    assert final_state(tmp_path / "first")["global_step"] == 4


@pytest.mark.slow
def test_result_json_and_eval_reproduce_the_training_metrics(tmp_path: Path) -> None:
    cfg = compose_train([*TINY, "model.n_hashes=2"], output_dir=tmp_path / "train")
    assert run_recorded(cfg, train, program="reformer-train") is not None
    outcome = json.loads((tmp_path / "train" / "result.json").read_text())
    assert outcome["status"] == "ok" and outcome["reason"] is None
    assert outcome["global_step"] == 4 and outcome["model"]["n_hashes"] == 2
    assert {"val/loss", "val/accuracy", "test/loss", "test/accuracy"} <= set(outcome["metrics"])
    best = outcome["checkpoints"]["best"]
    assert Path(best).is_file() and Path(outcome["checkpoints"]["last"]).is_file()

    from hydra import compose, initialize_config_module

    with initialize_config_module("reformer_lab.conf", version_base="1.3"):
        eval_cfg = compose(
            "eval",
            overrides=[
                "~local",
                f"ckpt_path={best}",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                f"paths.output_dir={tmp_path / 'eval'}",
            ],
        )
    same = evaluate(eval_cfg)
    # the best checkpoint is the one the training's test ran on: identical test metrics
    assert same["metrics"]["test/loss"] == pytest.approx(outcome["metrics"]["test/loss"], abs=1e-6)
    assert same["metrics"]["test/accuracy"] == outcome["metrics"]["test/accuracy"]
    assert same["n_hashes"] == 2

    eval_cfg.n_hashes = 8
    more = evaluate(eval_cfg)
    stored = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert stored["n_hashes"] == 8 and set(stored["results"]) == {"val", "test"}
    assert more["metrics"]["val/loss"] != same["metrics"]["val/loss"]  # other hash rounds


def test_eval_rejects_a_missing_checkpoint(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module

    from reformer_lab.cli.validate import InvalidRunConfig

    with initialize_config_module("reformer_lab.conf", version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                "~local",
                f"ckpt_path={tmp_path / 'nope.ckpt'}",
                f"paths.output_dir={tmp_path}",
            ],
        )
    with pytest.raises(InvalidRunConfig, match=r"nope\.ckpt is not a file"):
        evaluate(cfg)
    cfg.ckpt_path = __file__
    cfg.n_hashes = 0
    with pytest.raises(InvalidRunConfig, match="n_hashes=0 must be a positive integer"):
        evaluate(cfg)


class RaiseOutOfMemory(Callback):
    """Raises the CUDA out-of-memory error (constructible without a GPU) at the first step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_is_reported_with_the_keys_to_change(tmp_path: Path) -> None:
    oom = "+callbacks.oom={_target_: tests.test_cli_train.RaiseOutOfMemory}"
    cfg = compose_train([*TINY, oom, "memory_budget_gb=2"], output_dir=tmp_path)
    with pytest.raises(
        SystemExit, match="out of GPU memory under the memory budget memory_budget_gb=2"
    ):
        run_recorded(cfg, train, program="reformer-train")
    outcome = json.loads((tmp_path / "result.json").read_text())
    assert outcome["status"] == "failed" and "data.batch_size" in outcome["reason"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.accelerator=cpu"], "needs a CUDA GPU"),
        (["trainer.accelerator=gpu", "trainer.devices=2"], "runs on one GPU"),
        (["trainer.accelerator=gpu", "model.dropout=0.1"], "needs model.dropout=0"),
        (["trainer.accelerator=gpu", "trainer.precision=16-mixed"], "a loss scaler cannot"),
        (
            [
                "trainer.accelerator=gpu",
                "trainer.precision=bf16-mixed",
                "trainer.accumulate_grad_batches=2",
            ],
            "accumulate_grad",
        ),
    ],
)
def test_capture_train_step_refuses_what_a_graph_cannot_replay(
    overrides: list[str], message: str, monkeypatch, tmp_path: Path
) -> None:
    """Checked before any model is built: each message names the key to change (and the way
    out, capture_train_step=false). CUDA is pretended past the first check."""
    from reformer_lab.cli.validate import InvalidRunConfig, validate_run

    if overrides != ["trainer.accelerator=cpu"]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = compose_train([*TINY, "capture_train_step=true", *overrides], output_dir=tmp_path)
    with pytest.raises(InvalidRunConfig, match=message) as caught:
        validate_run(cfg)
    assert "capture_train_step=false" in str(caught.value)


def test_captured_run_clips_in_the_module_not_the_trainer(monkeypatch, tmp_path: Path) -> None:
    """Manual optimization: the Trainer's gradient_clip_val moves to the module, which clips
    with Lightning's clip_gradients (the Trainer would refuse to clip in this mode)."""
    from reformer_lab.cli.build import build_module, build_trainer
    from reformer_lab.cli.validate import validate_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = compose_train(
        [*TINY, "capture_train_step=true", "trainer.accelerator=gpu", "trainer.precision=32-true"],
        output_dir=tmp_path,
    )
    module = build_module(cfg, validate_run(cfg))
    assert module.capture_train_step and not module.automatic_optimization
    assert module.gradient_clip_val == cfg.trainer.gradient_clip_val == 1.0
    monkeypatch.undo()  # a real Trainer on this machine: on the CPU
    cfg.trainer.accelerator = "cpu"
    trainer = build_trainer(cfg, callbacks=[], loggers=[])
    assert trainer.gradient_clip_val is None
    with pytest.raises(ValueError, match="gradient_clip_val is for capture_train_step"):
        type(module)(module.model.cfg, gradient_clip_val=1.0)
