"""`reformer-eval`: a checkpoint in, validation/test metrics out (conf/eval.yaml).

    reformer-eval ckpt_path=outputs/train/<date>/<time>/checkpoints/last.ckpt
    reformer-eval ckpt_path=... n_hashes=8          # more hash rounds than in training (sec 5)
    reformer-eval ckpt_path=... splits=[test] +data.batch_size=4 trainer.accelerator=gpu

The model and the data come from the checkpoint (reformer-train stores its resolved config in
it); `+data.<key>=...` overrides the stored data config (e.g. a new data.path).
Writes eval.json (metrics per split) in the run folder and prints one line per split.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_PATH = "pkg://reformer_lab.conf"
SPLITS = ("val", "test")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    import lightning.pytorch as pl

    from reformer_lab.cli.outcome import write_json_atomically
    from reformer_lab.cli.train import scalars
    from reformer_lab.cli.validate import InvalidRunConfig, build_or_explain
    from reformer_lab.lit import ReformerLitModule, resolve_precision

    checkpoint = Path(cfg.ckpt_path)
    if not checkpoint.is_file():
        raise InvalidRunConfig(
            f"ckpt_path={cfg.ckpt_path} is not a file: give a .ckpt written "
            f"by reformer-train (<run folder>/checkpoints/last.ckpt or best-*.ckpt)"
        )
    if cfg.n_hashes is not None and (not isinstance(cfg.n_hashes, int) or cfg.n_hashes < 1):
        raise InvalidRunConfig(f"n_hashes={cfg.n_hashes!r} must be a positive integer or null")
    unknown = sorted(set(cfg.splits) - set(SPLITS))
    if unknown or not cfg.splits:
        raise InvalidRunConfig(
            f"splits={list(cfg.splits)} must be a non-empty subset of {list(SPLITS)}"
        )

    module = ReformerLitModule.load_from_checkpoint(
        checkpoint, map_location="cpu", eval_n_hashes=cfg.n_hashes
    )
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
    n_hashes = cfg.n_hashes or module.model.cfg.n_hashes
    results: dict[str, dict[str, float]] = {}
    for split in cfg.splits:
        started = time.time()
        run = trainer.validate if split == "val" else trainer.test
        run(module, datamodule=datamodule, verbose=False)
        results[split] = scalars(trainer.callback_metrics)
        if trainer.is_global_zero:
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(results[split].items()))
            print(
                f"{split} (n_hashes={n_hashes}): {shown} [{time.time() - started:.0f} s]",
                flush=True,
            )
    payload = {"checkpoint": str(checkpoint.resolve()), "n_hashes": n_hashes, "results": results}
    if trainer.is_global_zero:
        write_json_atomically(Path(cfg.paths.output_dir) / "eval.json", payload)
    metrics = {k: v for split_metrics in results.values() for k, v in split_metrics.items()}
    return {
        "trainer": trainer,
        "metrics": metrics,
        "n_hashes": n_hashes,
        "checkpoint": payload["checkpoint"],
        "objective": metrics.get("val/loss"),
    }


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from reformer_lab.cli.run import run_recorded

    return run_recorded(cfg, evaluate, program="reformer-eval")


if __name__ == "__main__":
    main()
