"""`reformer-train`: a Hydra app over conf/train.yaml.

    reformer-train                                   # duplication task, laptop CPU, a few minutes
    reformer-train experiment=enwik8_3layer          # one GPU (conf/experiment/*.yaml)
    reformer-train experiment=enwik8_3layer trainer=ddp            # all GPUs of this node
    reformer-train -m model.bucket_size=32,64 model.n_hashes=1,2,4 model.depth=2,4   # a grid
    reformer-train -m hydra/launcher=submitit ...    # one SLURM job per trial
    reformer-train ckpt_path=outputs/train/<date>/<time>/checkpoints/last.ckpt      # resume
    reformer-train --cfg job                         # print the composed config and exit

Order of work: compose -> validate (cli/validate.py; no model, no data read) -> build ->
fit -> test the best checkpoint -> result.json in the run folder.
"""

from __future__ import annotations

import time
from typing import Any

import hydra
from omegaconf import DictConfig

CONFIG_PATH = "pkg://reformer_lab.conf"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Trains one configuration; returns metrics, checkpoints and the objective for sweepers."""
    # Imported here, not at the top: `reformer-train --help` / `--cfg job` should not load torch.
    import lightning.pytorch as pl

    from reformer_lab.cli.build import build_callbacks, build_loggers, build_module, build_trainer
    from reformer_lab.cli.validate import validate_run

    started = time.time()
    plan = validate_run(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg, plan)
    loggers = build_loggers(cfg.get("logger"), cfg.paths.output_dir)
    callbacks = build_callbacks(
        cfg.get("callbacks"),
        with_logger=bool(loggers),
        progress_bar=cfg.trainer.get("enable_progress_bar", True) is not False,
    )
    trainer = build_trainer(cfg, callbacks, loggers)
    trainer.fit(module, datamodule=plan.datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = scalars(trainer.callback_metrics)

    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") or None
    last = getattr(checkpoint, "last_model_path", "") or None
    if cfg.get("test_after_fit") and not trainer.fast_dev_run:
        trainer.test(module, datamodule=plan.datamodule, ckpt_path=best, verbose=False)
        metrics.update(scalars(trainer.callback_metrics))

    headline = plan.datamodule.metric
    if trainer.is_global_zero:
        print(final_line(metrics, headline, plan.datamodule, time.time() - started), flush=True)
    return {
        "trainer": trainer,
        "metrics": metrics,
        "objective": metrics.get("val/loss"),
        "global_step": trainer.global_step,
        "checkpoints": {"best": best, "last": last},
        "model": module.hparams["model"],
        "n_parameters": sum(p.numel() for p in module.parameters()),
    }


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in metrics.items()
        if getattr(value, "numel", lambda: 1)() == 1
    }


def final_line(metrics: dict[str, float], headline: str, datamodule: Any, seconds: float) -> str:
    shown = [
        f"{split}/{headline}={metrics[f'{split}/{headline}']:.4f}"
        for split in ("val", "test")
        if f"{split}/{headline}" in metrics
    ]
    if headline == "accuracy":  # the duplication task: symbols 1..vocab-1 -> chance 1/(vocab-1)
        shown.append(f"(chance {1 / (datamodule.vocab_size - 1):.4f})")
    return f"final: {' '.join(shown) or 'no validation ran'} after {seconds:.0f} s"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from reformer_lab.cli.run import run_recorded

    return run_recorded(cfg, train, program="reformer-train")


if __name__ == "__main__":
    main()
