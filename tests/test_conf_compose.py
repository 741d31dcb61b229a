"""Every config under conf/ composes and passes the compose-time validation; sweep keys reach
ReformerConfig one to one; invalid combinations are rejected before any model is built."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from reformer_lab.cli.validate import FROM_DATA, InvalidRunConfig, validate_run
from reformer_lab.model import ReformerConfig
from tests.conftest import CONF_DIR, TINY, compose_train

pytestmark = pytest.mark.usefixtures("reset_hydra")

GROUPS = (
    "model",
    "data",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "debug",
    "experiment",
    "attention",
)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group_option", [f"{g}={o}" for g in GROUPS for o in options(g)])
def test_every_config_composes_and_validates(group_option: str, tmp_path: Path) -> None:
    overrides = ["~local", group_option]
    if group_option == "data=text_file":
        overrides.append(f"data.path={tmp_path / 'corpus.txt'}")
        (tmp_path / "corpus.txt").write_bytes(b"hello reformer " * 100)
    cfg = compose_train(overrides, output_dir=tmp_path)
    plan = validate_run(cfg)
    assert plan.model_config.max_seq_len >= plan.datamodule.seq_len
    assert plan.model_config.vocab_size >= plan.datamodule.vocab_size
    group, option = group_option.split("=")
    if group == "model":  # the chosen file's values reach ReformerConfig unchanged
        chosen = OmegaConf.load(CONF_DIR / "model" / f"{option}.yaml")
        for_data = OmegaConf.load(CONF_DIR / "model" / "for_data" / "duplication.yaml")
        for key, value in chosen.items():
            if key != "defaults" and key not in for_data and value is not None:
                expected = tuple(value) if key in ("axial_shape", "axial_dims") else value
                assert getattr(plan.model_config, key) == expected, key


def test_launchers_compose() -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module("reformer_lab.conf", version_base="1.3"):
        basic = compose("train", overrides=["~local"], return_hydra_config=True)
        joblib = compose(
            "train", overrides=["~local", "hydra/launcher=joblib"], return_hydra_config=True
        )
        slurm = compose(
            "train", overrides=["~local", "hydra/launcher=submitit"], return_hydra_config=True
        )
    assert basic.hydra.launcher._target_.endswith("BasicLauncher")
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher")
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.timeout_min == 1440  # our defaults over the plugin's
    sweep = OmegaConf.to_container(basic.hydra.sweep, resolve=False)
    assert sweep["subdir"] == "${hydra.job.num}"  # one folder per job


def test_eval_config_composes() -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module("reformer_lab.conf", version_base="1.3"):
        cfg = compose("eval", overrides=["~local", "ckpt_path=x.ckpt", "n_hashes=8"])
    assert cfg.n_hashes == 8 and list(cfg.splits) == ["val", "test"]


def test_model_base_file_lists_every_reformer_config_field() -> None:
    """conf/model/reformer.yaml holds every field at its default, so any model.<field> override
    works; a field added to ReformerConfig without it fails here."""
    listed = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "reformer.yaml"))
    fields = {f.name: f for f in dataclasses.fields(ReformerConfig)}
    assert set(listed) == set(fields)
    defaults = ReformerConfig.__dataclass_fields__
    for name, value in listed.items():
        if name in FROM_DATA:
            assert value is None, f"{name}: null means 'from the data module'"
            continue
        field = defaults[name]
        default = (
            field.default_factory()
            if field.default_factory is not dataclasses.MISSING
            else field.default
        )
        assert value == default, name


def test_sweep_keys_map_one_to_one_onto_reformer_config(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            *TINY,
            "model.bucket_size=32",
            "model.n_hashes=3",
            "model.depth=2",
            "model.ff_chunks=2",
            "model.attention=[lsh,full]",
        ],
        output_dir=tmp_path,
    )
    config = validate_run(cfg).model_config
    assert (config.bucket_size, config.n_hashes, config.depth, config.ff_chunks) == (32, 3, 2, 2)
    assert config.attention_per_layer == ["lsh", "full"]
    assert (config.vocab_size, config.max_seq_len) == (8, 64)  # null -> from the data module


def test_multiple_debug_presets_combine(tmp_path: Path) -> None:
    cfg = compose_train(
        ["~local", "experiment=enwik8_3layer", "debug=[tiny,fast]"], output_dir=tmp_path
    )
    assert cfg.trainer.fast_dev_run is True and cfg.model.dim == 32 and cfg.model.depth == 1
    assert cfg.callbacks.checkpoint is None and not cfg.logger


BAD = [
    (["model.dim=30", "model.heads=4"], "dim=30 is not divisible by heads=4"),
    (["model.bucket_size=24"], "must be a power of two"),
    (["model.max_seq_len=32"], "raise model.max_seq_len"),
    (["model.vocab_size=4"], "set model.vocab_size >= 8"),
    (["model.causal=false"], "set model.causal=true"),
    (["model.axial_shape=[4,4]"], "covers 16 positions, fewer than max_seq_len=64"),
    (["model.attention=[lsh,full]"], "attention lists 2 layer kinds but depth=1"),
    (["optimizer.lr=-1"], "optimizer: Invalid learning rate"),
    (["scheduler=warmup_cosine", "trainer.max_steps=-1"], "set trainer.max_steps"),
    (["data.batch_size=0"], "data.batch_size must be an integer >= 1"),
    (["data.w_len=0"], "data.w_len must be an integer >= 1"),
    (["ckpt_path=/no/such/file.ckpt"], "ckpt_path=/no/such/file.ckpt is not a file"),
    (["eval_n_hashes=0"], "eval_n_hashes=0 must be a positive integer"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_invalid_combinations_are_rejected_before_any_model_is_built(
    overrides: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reformer_lab.lit.module as lit_module
    from reformer_lab.cli.train import train

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the configuration was validated")

    monkeypatch.setattr(lit_module, "ReformerLM", no_model)
    cfg = compose_train([*TINY, *overrides], output_dir=tmp_path)
    with pytest.raises(InvalidRunConfig, match=_escaped(message)):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_per_data_model_settings_follow_the_data_choice(tmp_path: Path) -> None:
    """conf/model/for_data/duplication.yaml gives the duplication task a plain position table
    for any model size; other data keep the axial default, and experiments/overrides win."""
    assert compose_train(["~local"]).model.axial_shape == [1024]
    assert compose_train(["~local", "model=base"]).model.axial_shape == [1024]
    assert compose_train(["~local", "data=enwik8"]).model.axial_shape is None
    assert compose_train(["~local", "model.axial_shape=[8,8]"]).model.axial_shape == [8, 8]


def test_objects_get_plain_containers_so_checkpoints_load_weights_only(tmp_path) -> None:
    """A ListConfig saved in hyperparameters makes torch.load(weights_only=True) refuse the
    checkpoint: instantiated objects must receive plain lists and dicts."""
    from omegaconf import OmegaConf

    from reformer_lab.cli.validate import build_or_explain

    (tmp_path / "book.txt").write_bytes(bytes(range(256)) * 40)
    node = OmegaConf.create({
        "_target_": "reformer_lab.data.TextFileDataModule",
        "path": str(tmp_path / "book.txt"), "split": [0.8, 0.1, 0.1], "seq_len": 64,
    })  # fmt: skip
    data = build_or_explain(node, "data")
    assert type(data.hparams["split"]) in (list, tuple)


@pytest.mark.parametrize(
    ("choice", "kind", "n_hashes"),
    [("full", "full", 4), ("lsh1", "lsh", 1), ("lsh8", "lsh", 8), ("local", "local", 4)],
)
def test_attention_group_overrides_the_experiment(choice: str, kind: str, n_hashes: int) -> None:
    """`attention=<word>` comes after `experiment` in the defaults, so it wins over the
    experiment's own model.attention / model.n_hashes (duplication_paper sets n_hashes 4)."""
    cfg = compose_train(["~local", "experiment=duplication_paper", f"attention={choice}"])
    assert cfg.model.attention == kind
    assert cfg.model.n_hashes == n_hashes
