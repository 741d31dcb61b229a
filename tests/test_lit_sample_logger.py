"""SampleLogger: text samples in samples/epoch=NNN.txt (and a W&B table), image completions in a
PNG (and a W&B image), from fixed validation prompts; nothing in the sanity check or a
fast_dev_run; the model's training flags and the global random stream untouched.

The tiny runs trained here (`trained_run`) also give tests/test_cli_generate.py its checkpoints.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import matplotlib.image
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from reformer_lab.cli.run import run_recorded
from reformer_lab.cli.train import train
from reformer_lab.data import DuplicationDataModule
from reformer_lab.lit import ReformerLitModule
from reformer_lab.lit.callbacks import SampleLogger
from reformer_lab.lit.callbacks.samples import GRID_GAP, PREFIX_FILL, bytes_to_text
from reformer_lab.model import ReformerConfig
from tests.conftest import compose_train

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "with",
    "every",
    "bucket",
    "of",
    "hashed",
    "sorted",
    "long",
    "sequences",
]
CIFAR_SIDE = 32


def write_corpus(path: Path) -> Path:
    rng = random.Random(0)
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(2000)))
    return path


def text_overrides(root: Path) -> list[str]:
    """A byte-level text_file run: 1 layer, dim 32, length 64, epochs of 4 steps."""
    corpus = write_corpus(root / "corpus.txt")
    return [
        "~local",
        "data=text_file",
        f"data.path={corpus}",
        "data.seq_len=64",
        "data.batch_size=8",
        "data.train_samples_per_epoch=32",
        "data.num_workers=0",
        "data.pin_memory=false",
        "model.dim=32",
        "model.depth=1",
        "model.heads=2",
        "model.bucket_size=16",
        "model.n_hashes=2",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "test_after_fit=false",
    ]


def cifar_test_images() -> np.ndarray:
    """The 3 planar test images of the tiny CIFAR archive, (3, 3072) uint8."""
    return np.random.default_rng(7).integers(0, 256, (3, 3 * CIFAR_SIDE**2), dtype=np.uint8)


def image_overrides(root: Path) -> list[str]:
    """experiment=cifar10 shrunk by debug=tiny, on a 3-images-per-batch archive."""
    from tests.data.conftest import write_cifar_tar

    rng = np.random.default_rng(0)
    images = {
        f"data_batch_{i}": rng.integers(0, 256, (3, 3072), dtype=np.uint8) for i in range(1, 6)
    }
    images["test_batch"] = cifar_test_images()
    write_cifar_tar(root / "cifar10" / "cifar-10-python.tar.gz", images)
    return [
        "~local",
        "experiment=cifar10",
        "debug=tiny",
        "trainer.accelerator=cpu",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "scheduler.warmup_steps=1",
        "test_after_fit=false",
        "data.num_workers=0",
        "data.pin_memory=false",
        f"data.path={root / 'cifar10'}",
        "data.expected_md5=null",
        "data.download=false",
        "data.val_size=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
    ]


RUNS: dict[str, Path] = {}
"""Each tiny run is trained once per test session; its run folder, by name."""

RUN_OVERRIDES: dict[str, Callable[[Path], list[str]]] = {
    # 2 epochs, validation every 2 steps; samples every 2nd epoch: only epoch 0, step 2.
    "text_csv": lambda root: [
        *text_overrides(root),
        "logger=csv",
        "trainer.max_steps=8",
        "trainer.val_check_interval=2",
        "callbacks.sample_logger.every_n_epochs=2",
        "callbacks.sample_logger.num_samples=3",
        "callbacks.sample_logger.prompt_len=24",
        "callbacks.sample_logger.max_new_tokens=16",
    ],
    "text_wandb": lambda root: [
        *text_overrides(root),
        "logger=wandb",
        "logger.wandb.mode=offline",
        "trainer.max_steps=4",
    ],
    "image_wandb": lambda root: [
        *image_overrides(root),
        "logger=wandb",
        "logger.wandb.mode=offline",
    ],
}


def trained_run(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trains run `name` (RUN_OVERRIDES) the first time it is asked for; its run folder."""
    if name not in RUNS:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig

        root = tmp_path_factory.mktemp(name)
        cfg = compose_train(RUN_OVERRIDES[name](root), output_dir=root / "run")
        try:
            run_recorded(cfg, train, program="reformer-train")
        finally:
            GlobalHydra.instance().clear()
            HydraConfig.instance().cfg = None
        RUNS[name] = root / "run"
    return RUNS[name]


def validation_prompts(run: Path, n: int, length: int) -> list[str]:
    """The first `length` input bytes of the run's first n validation examples, as text."""
    from hydra.utils import instantiate

    stored = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    data = instantiate(stored["hyper_parameters"]["run_config"]["data"])
    data.setup("validate")
    return [bytes_to_text(data.val_set[i]["inputs"][:length]) for i in range(n)]


def parse_samples(text: str) -> list[tuple[str, str]]:
    """(prompt, completion) of each '--- sample i ---' block of a samples/epoch=NNN.txt."""
    blocks = text.split("\n--- sample ")[1:]
    pairs = []
    for i, block in enumerate(blocks):
        head, body = block.split("\n", 1)
        assert head == f"{i} ---"
        prompt, completion = body.removeprefix("[prompt]\n").split("\n[completion]\n")
        pairs.append((prompt, completion.removesuffix("\n")))
    return pairs


def test_text_samples_once_per_sampled_epoch_from_the_validation_prompts(tmp_path_factory) -> None:
    run = trained_run("text_csv", tmp_path_factory)
    written = sorted(p.name for p in (run / "samples").iterdir())
    assert written == ["epoch=000.txt"]  # epoch 1 is skipped (every_n_epochs=2)
    text = (run / "samples" / "epoch=000.txt").read_text()
    # the first of epoch 0's two validations wrote it, the second did not overwrite it
    assert text.startswith("# epoch 0, step 2: 3 samples of 16 new tokens after 24-token")
    samples = parse_samples(text)
    assert len(samples) == 3
    assert [prompt for prompt, _ in samples] == validation_prompts(run, 3, 24)
    assert all(completion for _, completion in samples)


def offline_run_files(run: Path) -> Path:
    (files,) = (run / "wandb").glob("offline-run-*/files")
    return files


def test_wandb_gets_a_table_of_text_samples(tmp_path_factory) -> None:
    run = trained_run("text_wandb", tmp_path_factory)
    (table_file,) = (offline_run_files(run) / "media" / "table" / "samples").glob(
        "text_*.table.json"
    )
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["epoch", "step", "sample", "prompt", "completion"]
    assert len(table["data"]) == 2  # the default num_samples
    assert [row[3] for row in table["data"]] == validation_prompts(run, 2, 64 // 2)
    assert [row[:3] for row in table["data"]] == [[0, 4, 0], [0, 4, 1]]
    # the same samples are in the run folder's text file
    assert [p for p, _ in parse_samples((run / "samples" / "epoch=000.txt").read_text())] == [
        row[3] for row in table["data"]
    ]


def test_images_are_completed_from_their_top_half_into_a_png(tmp_path_factory) -> None:
    run = trained_run("image_wandb", tmp_path_factory)
    grid = matplotlib.image.imread(run / "samples" / "epoch=000.png")  # (rows, cols, 4) floats
    grid = np.round(grid[..., :3] * 255).astype(np.uint8)
    side, step = CIFAR_SIDE, CIFAR_SIDE + GRID_GAP
    assert grid.shape == (2 * step - GRID_GAP, 3 * step - GRID_GAP, 3)  # 2 images x 3 columns
    half = side // 2
    for r in range(2):
        prefix, sample, original = (
            grid[r * step : r * step + side, c * step : c * step + side] for c in range(3)
        )
        assert np.array_equal(prefix[:half], original[:half])
        assert (prefix[half:] == PREFIX_FILL).all()
        assert np.array_equal(sample[:half], original[:half])  # the prompt is kept
        assert not np.array_equal(sample[half:], original[half:])
    (media,) = (offline_run_files(run) / "media" / "images" / "samples").glob("images_*.png")
    assert matplotlib.image.imread(media).shape[:2] == grid.shape[:2]


class ModeProbe(Callback):
    """Before SampleLogger: puts the model in train mode and notes the RNG state; after it:
    checks both are as they were. At sanity-check end: no samples may exist yet."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.rng, self.checked = run_dir, None, 0

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        assert not (self.run_dir / "samples").exists()


class Before(ModeProbe):
    def on_validation_end(self, trainer, pl_module) -> None:
        pl_module.train()
        self.rng = torch.get_rng_state()


class After(ModeProbe):
    def __init__(self, run_dir: Path, before: Before) -> None:
        super().__init__(run_dir)
        self.before = before

    def on_validation_end(self, trainer, pl_module) -> None:
        assert all(m.training for m in pl_module.modules())
        assert torch.equal(torch.get_rng_state(), self.before.rng)
        self.checked += 1


def tiny_fit(run_dir: Path, callbacks: list[Callback], **trainer_args) -> None:
    cfg = ReformerConfig(vocab_size=8, dim=32, depth=1, heads=2, max_seq_len=64, bucket_size=16)
    module = ReformerLitModule(cfg, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    data = DuplicationDataModule(
        vocab_size=8, w_len=31, n_train=16, n_val=4, n_test=4, batch_size=8
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        default_root_dir=run_dir,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_args,
    )
    trainer.fit(module, data)


def test_sampling_restores_train_mode_and_the_random_stream_and_skips_the_sanity_check(
    tmp_path: Path,
) -> None:
    before = Before(tmp_path)
    after = After(tmp_path, before)
    sampler = SampleLogger(num_samples=2, max_new_tokens=8, prompt_len=8)
    tiny_fit(tmp_path, [before, sampler, after], max_steps=2, num_sanity_val_steps=1)
    assert after.checked == 2  # the sanity check's validation and epoch 0's
    samples = parse_samples((tmp_path / "samples" / "epoch=000.txt").read_text())
    assert len(samples) == 2


def test_nothing_is_sampled_in_a_fast_dev_run(tmp_path: Path) -> None:
    tiny_fit(tmp_path, [SampleLogger()], fast_dev_run=True)
    assert not (tmp_path / "samples").exists()


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="num_samples=0 must be a positive integer"):
        SampleLogger(num_samples=0)
    with pytest.raises(ValueError, match="temperature=-1 must be >= 0"):
        SampleLogger(temperature=-1)
    with pytest.raises(ValueError, match=r"top_p=1.5 must be in \(0, 1\]"):
        SampleLogger(top_p=1.5)
