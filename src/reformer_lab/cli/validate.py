"""Checks a composed run configuration before any model is built or any data is read.

What is truly invalid (the model pads any length to a multiple of the bucket size, so a
length is never "unchunkable" by itself):
- a `ReformerConfig` that rejects its own fields (dim not divisible by heads, a bucket size
  that is not a power of two, an axial shape smaller than max_seq_len, ...);
- data and model that disagree: the data's sequences longer than model.max_seq_len, token
  ids beyond model.vocab_size, a non-causal model on next-token data (it would see its
  targets);
- optimizer / scheduler arguments their constructors reject (tried on a dummy parameter),
  e.g. a cosine schedule with no trainer.max_steps;
- a resume checkpoint that does not exist.
Each message names the key to change. `RunPlan` carries what the checks built.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from reformer_lab.model import ConfigError, ReformerConfig

log = logging.getLogger(__name__)
FROM_DATA = ("vocab_size", "max_seq_len", "axial_shape")
"""model fields that null fills from the data module."""


class InvalidRunConfig(ValueError):
    """A run configuration that cannot work; the message says which key to change."""


@dataclass
class RunPlan:
    datamodule: Any
    """The LightningDataModule (constructed and argument-checked; no data read yet)."""
    model_config: ReformerConfig
    optimizer: Any
    """parameters -> optimizer (a functools.partial built from `optimizer`)."""
    scheduler: Any | None
    """optimizer -> LR scheduler, or None."""


def validate_run(cfg: DictConfig) -> RunPlan:
    """All compose-time checks; raises `InvalidRunConfig` with a message naming what to change."""
    datamodule = build_or_explain(cfg.data, "data")
    for attribute in ("vocab_size", "seq_len", "metric"):
        if not hasattr(datamodule, attribute):
            raise InvalidRunConfig(
                f"data._target_={cfg.data._target_} has no `{attribute}`: the training side "
                f"reads vocab_size, seq_len, metric (and axial_shape) from the data module"
            )
    model_config = model_config_for(cfg.model, datamodule)
    check_model_fits_data(model_config, datamodule)
    optimizer, scheduler = check_optimization(cfg)
    if cfg.get("ckpt_path") is not None and not Path(cfg.ckpt_path).is_file():
        raise InvalidRunConfig(
            f"ckpt_path={cfg.ckpt_path} is not a file: give the path of a "
            f".ckpt (e.g. <run folder>/checkpoints/last.ckpt) or ckpt_path=null"
        )
    eval_n_hashes = cfg.get("eval_n_hashes")
    if eval_n_hashes is not None and (not isinstance(eval_n_hashes, int) or eval_n_hashes < 1):
        raise InvalidRunConfig(
            f"eval_n_hashes={eval_n_hashes!r} must be a positive integer or null"
        )
    if cfg.get("capture_train_step"):
        check_capturable(cfg, model_config)
    return RunPlan(datamodule, model_config, optimizer, scheduler)


def check_capturable(cfg: DictConfig, config: ReformerConfig) -> None:
    """capture_train_step=true (`ReformerLitModule`): what a CUDA-graph replay of the training
    step cannot do is refused here, each with the key to change."""
    from reformer_lab.lit import resolve_precision

    trainer = cfg.trainer
    off = "or capture_train_step=false"
    if trainer.get("accelerator") == "cpu" or not torch.cuda.is_available():
        raise InvalidRunConfig(f"capture_train_step=true needs a CUDA GPU: trainer=gpu {off}")
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    one = devices == 1 or (isinstance(devices, (list, tuple)) and len(devices) == 1)
    if not one or nodes != 1:
        raise InvalidRunConfig(
            f"capture_train_step=true runs on one GPU (DDP's and FSDP's gradient hooks cannot "
            f"run inside a CUDA graph); trainer.devices={devices}, trainer.num_nodes={nodes}: "
            f"set trainer.devices=1 {off}"
        )
    if config.dropout > 0:
        raise InvalidRunConfig(
            f"capture_train_step=true needs model.dropout=0 (the reversible recompute replays "
            f"dropout masks from RNG states a CUDA graph cannot read); model.dropout="
            f"{config.dropout} {off}"
        )
    precision = str(resolve_precision(trainer.get("precision")))
    if not (precision.startswith("bf16") or precision.startswith("32")):
        raise InvalidRunConfig(
            f"capture_train_step=true needs trainer.precision=bf16-mixed or 32-true (a loss "
            f"scaler cannot run inside a CUDA graph); it is {precision} {off}"
        )
    if trainer.get("accumulate_grad_batches", 1) != 1:
        raise InvalidRunConfig(
            f"capture_train_step=true steps the optimizer after every batch: "
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} needs "
            f"trainer.accumulate_grad_batches=1 {off} (or a larger data.batch_size)"
        )


def build_or_explain(node: DictConfig, key: str) -> Any:
    """`instantiate(node)`, turning the constructor's own error into InvalidRunConfig."""
    try:
        return instantiate(
            node, _convert_="all"
        )  # plain lists and dicts: checkpoints load weights-only
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise InvalidRunConfig(f"{key}: {cause}") from cause


def model_config_for(model: DictConfig, datamodule: Any) -> ReformerConfig:
    """`ReformerConfig(**cfg.model)`, with null vocab_size / max_seq_len / axial_shape from the data."""
    fields = OmegaConf.to_container(model, resolve=True)
    assert isinstance(fields, dict)
    known = {f.name for f in dataclasses.fields(ReformerConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InvalidRunConfig(
            f"model.{unknown[0]} is not a ReformerConfig field; fields are {sorted(known)}"
        )
    from_data = {
        "vocab_size": datamodule.vocab_size,
        "max_seq_len": datamodule.seq_len,
        "axial_shape": getattr(datamodule, "axial_shape", None),
    }
    for name in FROM_DATA:
        if fields.get(name) is None and from_data[name] is not None:
            fields[name] = from_data[name]
    fields = {k: v for k, v in fields.items() if v is not None or k not in FROM_DATA}
    try:
        return ReformerConfig(**fields)
    except ConfigError as error:
        raise InvalidRunConfig(f"model: {error}") from error
    except TypeError as error:  # a field of the wrong kind, e.g. a dict where a number goes
        raise InvalidRunConfig(f"model: {error}") from error


def check_model_fits_data(config: ReformerConfig, datamodule: Any) -> None:
    if datamodule.seq_len > config.max_seq_len:
        raise InvalidRunConfig(
            f"the data's sequences have length {datamodule.seq_len} but model.max_seq_len="
            f"{config.max_seq_len}: raise model.max_seq_len (and model.axial_shape to cover it) "
            f"or set it to null (= the data's length)"
        )
    if datamodule.vocab_size > config.vocab_size:
        raise InvalidRunConfig(
            f"the data uses {datamodule.vocab_size} token ids but model.vocab_size="
            f"{config.vocab_size}: set model.vocab_size >= {datamodule.vocab_size} or null"
        )
    if not config.causal:
        raise InvalidRunConfig(
            "model.causal=false lets position t attend to position t+1, the token it must "
            "predict; every data module here trains next-token prediction: set model.causal=true"
        )
    if config.pad_multiple > 1 and datamodule.seq_len % config.pad_multiple:
        padded = -(-datamodule.seq_len // config.pad_multiple) * config.pad_multiple
        log.warning(
            f"data length {datamodule.seq_len} is not a multiple of model.bucket_size="
            f"{config.bucket_size}: each sequence is padded to {padded} (masked, so correct, "
            f"but {padded - datamodule.seq_len} positions of work are wasted)"
        )


def check_optimization(cfg: DictConfig) -> tuple[Any, Any | None]:
    """Builds the optimizer and scheduler factories and tries them on a dummy parameter."""
    for key in ("optimizer", "scheduler"):
        node = cfg.get(key)
        if node and "_target_" not in node:
            raise InvalidRunConfig(
                f"{key} has keys {sorted(node)} but no _target_: pick a file "
                f"of conf/{key}/ (e.g. {key}="
                + ("adam)" if key == "optimizer" else "warmup_cosine)")
            )
    optimizer = build_or_explain(cfg.optimizer, "optimizer")
    scheduler_node = cfg.get("scheduler")
    scheduler = build_or_explain(scheduler_node, "scheduler") if scheduler_node else None
    probe = torch.nn.Parameter(torch.zeros(1))
    try:
        dummy = optimizer([probe])
    except (TypeError, ValueError) as error:
        raise InvalidRunConfig(f"optimizer: {error}") from error
    if scheduler is not None:
        try:
            scheduler(dummy)
        except (TypeError, ValueError) as error:
            raise InvalidRunConfig(f"scheduler: {error}") from error
    return optimizer, scheduler
