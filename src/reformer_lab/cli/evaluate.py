"""`reformer-eval`: a checkpoint in, validation/test metrics out (conf/eval.yaml).

    reformer-eval ckpt_path=outputs/train/<date>/<time>/checkpoints/last.ckpt
    reformer-eval ckpt_path=... n_hashes=8          # more hash rounds than in training (sec 5)
    reformer-eval ckpt_path=... splits=[test] +data.batch_size=4 trainer.accelerator=gpu
    reformer-eval ckpt_path=... attention=full      # an LSH-trained model with full attention
    reformer-eval ckpt_path=... attention=lsh8      # a full-attention model with LSH-8

The model and the data come from the checkpoint (reformer-train stores its resolved config in
it); `+data.<key>=...` overrides the stored data config (e.g. a new data.path).
`attention=full|lsh1|lsh2|lsh4|lsh8|local` (the conf/attention group, as in reformer-train)
evaluates every layer with that attention kind instead of the trained one (Table 2 of the paper
crosses training and evaluation kinds): the parameters of every kind are the same projections,
so the weights carry over unchanged.
Writes eval.json (metrics per split) in the run folder and prints one line per split.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from reformer_lab.lit import ReformerLitModule

CONFIG_PATH = "pkg://reformer_lab.conf"
SPLITS = ("val", "test")
ATTENTION_KINDS = ("full", "lsh", "local")  # as model.ReformerConfig.attention accepts
LSH_ONLY_STATE = ".core.hash_step"
"""The one state entry that differs between attention kinds: an LSH core's training-step counter
(model/attention/lsh.py). Evaluation hashes with the fixed eval rotations, so it is not needed."""


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    import lightning.pytorch as pl

    from reformer_lab.cli.outcome import write_json_atomically
    from reformer_lab.cli.train import scalars
    from reformer_lab.cli.validate import InvalidRunConfig, build_or_explain
    from reformer_lab.lit import resolve_precision

    checkpoint = Path(cfg.ckpt_path)
    if not checkpoint.is_file():
        raise InvalidRunConfig(
            f"ckpt_path={cfg.ckpt_path} is not a file: give a .ckpt written "
            f"by reformer-train (<run folder>/checkpoints/last.ckpt or best-*.ckpt)"
        )
    attention, n_hashes_asked = attention_asked(cfg)
    unknown = sorted(set(cfg.splits) - set(SPLITS))
    if unknown or not cfg.splits:
        raise InvalidRunConfig(
            f"splits={list(cfg.splits)} must be a non-empty subset of {list(SPLITS)}"
        )

    module = load_for_evaluation(checkpoint, attention, n_hashes_asked)
    run_config = module.hparams.get("run_config") or {}
    if "data" not in run_config:
        raise InvalidRunConfig(f"{checkpoint} holds no run config (not written by reformer-train)")
    data_cfg = OmegaConf.merge(OmegaConf.create(run_config["data"]), cfg.data)
    datamodule = build_or_explain(data_cfg, "data")

    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_args, dict)
    trainer_args["precision"] = resolve_precision(trainer_args.get("precision"))
    trainer = pl.Trainer(
        **trainer_args, enable_checkpointing=False, default_root_dir=cfg.paths.output_dir
    )
    n_hashes = n_hashes_asked or module.model.cfg.n_hashes
    kinds = module.model.cfg.attention  # the kind of every layer, or a list of them
    results: dict[str, dict[str, float]] = {}
    for split in cfg.splits:
        started = time.time()
        run = trainer.validate if split == "val" else trainer.test
        run(module, datamodule=datamodule, verbose=False)
        results[split] = scalars(trainer.callback_metrics)
        if trainer.is_global_zero:
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(results[split].items()))
            print(
                f"{split} (attention={kinds}, n_hashes={n_hashes}): {shown} "
                f"[{time.time() - started:.0f} s]",
                flush=True,
            )
    payload = {
        "checkpoint": str(checkpoint.resolve()),
        "attention": kinds,
        "n_hashes": n_hashes,
        "results": results,
    }
    if trainer.is_global_zero:
        write_json_atomically(Path(cfg.paths.output_dir) / "eval.json", payload)
    metrics = {k: v for split_metrics in results.values() for k, v in split_metrics.items()}
    return {
        "trainer": trainer,
        "metrics": metrics,
        "attention": kinds,
        "n_hashes": n_hashes,
        "checkpoint": payload["checkpoint"],
        "objective": metrics.get("val/loss"),
    }


def attention_asked(cfg: DictConfig) -> tuple[str | None, int | None]:
    """(attention kind, hash rounds) to evaluate with; None = as trained.

    `attention=<option>` (conf/attention, package `model`) sets model.attention and, for lshK,
    model.n_hashes; `n_hashes=K` sets the rounds alone. Contradicting or unknown values are
    refused before anything is loaded.
    """
    from reformer_lab.cli.validate import InvalidRunConfig

    n_hashes = cfg.get("n_hashes")
    if n_hashes is not None and (not isinstance(n_hashes, int) or n_hashes < 1):
        raise InvalidRunConfig(f"n_hashes={n_hashes!r} must be a positive integer or null")
    chosen = cfg.get("model") or {}
    unknown = sorted(set(chosen) - {"attention", "n_hashes"})
    if unknown:
        raise InvalidRunConfig(
            f"reformer-eval takes the model from the checkpoint; only attention=<option> "
            f"(model.attention, model.n_hashes) may change it, not model.{unknown[0]}"
        )
    kind = chosen.get("attention")
    if kind is not None and kind not in ATTENTION_KINDS:
        raise InvalidRunConfig(
            f"model.attention={kind!r} must be one of {list(ATTENTION_KINDS)} (or leave it unset)"
        )
    rounds = chosen.get("n_hashes") if kind == "lsh" else None
    if n_hashes is not None and rounds is not None and n_hashes != rounds:
        raise InvalidRunConfig(
            f"n_hashes={n_hashes} contradicts attention=lsh{rounds}: give one of them"
        )
    return kind, n_hashes if n_hashes is not None else rounds


def load_for_evaluation(
    checkpoint: Path, attention: str | None, n_hashes: int | None
) -> ReformerLitModule:
    """The checkpoint's `ReformerLitModule`, evaluating with `n_hashes` rounds (None: as trained);
    with `attention` set, every layer uses that kind instead of the trained one.

    Every kind has the same parameters (model/attention/self_attention.py: the QK, V and output
    projections around a parameter-free core), so the trained weights load one to one. The only
    difference tolerated is the LSH cores' `hash_step` buffer: present in an LSH checkpoint but
    not in a full/local model, or missing when a full/local checkpoint is evaluated with LSH.
    Any other missing or unexpected entry is an error.
    """
    from reformer_lab.cli.validate import InvalidRunConfig
    from reformer_lab.lit import ReformerLitModule
    from reformer_lab.model import ConfigError

    trained = ReformerLitModule.load_from_checkpoint(
        checkpoint, map_location="cpu", eval_n_hashes=n_hashes
    )
    if attention is None or trained.model.cfg.attention == attention:
        return trained
    model = {**trained.hparams["model"], "attention": attention}
    try:
        swapped = ReformerLitModule(**{**trained.hparams, "model": model})
    except ConfigError as error:
        raise InvalidRunConfig(
            f"attention={attention} does not fit {checkpoint}: {error}"
        ) from None
    mismatch = swapped.load_state_dict(trained.state_dict(), strict=False)
    unexplained = [
        key
        for key in (*mismatch.missing_keys, *mismatch.unexpected_keys)
        if not key.endswith(LSH_ONLY_STATE)
    ]
    if unexplained:
        raise InvalidRunConfig(
            f"{checkpoint} does not load into a model with attention={attention}: missing "
            f"{sorted(set(unexplained) & set(mismatch.missing_keys))}, unexpected "
            f"{sorted(set(unexplained) & set(mismatch.unexpected_keys))}"
        )
    return swapped


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from reformer_lab.cli.run import run_recorded

    return run_recorded(cfg, evaluate, program="reformer-eval")


if __name__ == "__main__":
    main()
