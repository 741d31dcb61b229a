"""Shared helpers for the framework tests (lit/, cli/, conf/): compose the real configs at a
CPU-seconds size, run the CLI in a subprocess. (Kept free of torch/Lightning imports so the
model and data tests do not pay for them.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

TINY = [
    "~local",  # never the developer's own conf/local/default.yaml
    "model.dim=32",
    "model.depth=1",
    "model.heads=2",
    "model.bucket_size=16",
    "model.n_hashes=1",
    "data.vocab_size=8",
    "data.w_len=31",  # length 64
    "data.n_train=32",
    "data.n_val=16",
    "data.n_test=16",
    "data.batch_size=8",  # 4 steps per epoch
    "logger=none",
    "trainer.accelerator=cpu",
    "trainer.max_steps=4",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
]
"""Duplication task, length 64, a 1-layer dim-32 model: a training step takes milliseconds."""


def compose_train(overrides: list[str], output_dir: Path | None = None):
    """The composed `train` config, as reformer-train would see it (HydraConfig set).

    `output_dir` replaces Hydra's run folder (there is no Hydra run around a unit test).
    """
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_module("reformer_lab.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *extra], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None):
    """Runs `python -m <module> args` in `cwd` with the repository importable (tests.conftest)."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "0",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=full_env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


@pytest.fixture
def reset_hydra():
    """Each test starts without a global Hydra config."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
