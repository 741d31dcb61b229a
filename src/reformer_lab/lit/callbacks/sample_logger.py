"""`SampleLogger`: a few samples from the model at the end of validation, to watch it learn.

Prompts are fixed: the first `num_samples` examples of the validation set, taken once.
- text (byte-level data): the first `prompt_len` tokens of each example, then `max_new_tokens`
  sampled with the cached `ReformerLM.generate`; written to <run dir>/samples/epoch=NNN.txt
  and, with a W&B logger, to a wandb.Table under "samples/text";
- images (data cifar10 / imagenet64): the top half of each image, completed pixel by pixel;
  a PNG grid (prefix | sample | original, one row per image) in <run dir>/samples/epoch=NNN.png
  and, with a W&B logger, a wandb.Image under "samples/images".

It runs on global rank zero only, at most once per epoch (the first validation of every
`every_n_epochs`-th epoch of a fit), and never in the sanity check or a fast_dev_run. Sampling
uses its own seeded generator, so the training's random streams are untouched, and
`generate` puts the model in eval mode and restores every module's training flag.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from reformer_lab.data.images import ImageDataModule
from reformer_lab.lit.callbacks.samples import (
    complete_images,
    image_grid,
    prefix_image,
    raster_to_image,
    render_tokens,
    write_png_atomically,
    write_text_atomically,
)

log = logging.getLogger(__name__)


class SampleLogger(Callback):
    """Samples from fixed validation prompts at validation end; see the module docstring.

    Args:
        every_n_epochs: sample in epochs 0, n, 2n, ...
        num_samples: prompts (validation examples) per round; fewer if validation is smaller.
        max_new_tokens: text only: new tokens per sample, at most half of model.max_seq_len.
        prompt_len: text only: prompt tokens, at most max_seq_len minus the new tokens.
        temperature, top_k, top_p: sampling (temperature 0 = greedy), as in `generate`.
        seed: seeds the sampling generator afresh each round, so rounds differ by the model only.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 2,
        max_new_tokens: int = 64,
        prompt_len: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> None:
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("num_samples", num_samples),
            ("max_new_tokens", max_new_tokens),
            ("prompt_len", prompt_len),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SampleLogger: {name}={value!r} must be a positive integer")
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"SampleLogger: temperature={temperature!r} must be >= 0 (0 = greedy)")
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ValueError(f"SampleLogger: top_k={top_k!r} must be a positive integer or None")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise ValueError(f"SampleLogger: top_p={top_p!r} must be in (0, 1] or None")
        self.every_n_epochs, self.num_samples = every_n_epochs, num_samples
        self.max_new_tokens, self.prompt_len = max_new_tokens, prompt_len
        self.sampling = {"temperature": float(temperature), "top_k": top_k, "top_p": top_p}
        self.seed = seed
        self.last_epoch: int | None = None
        self.examples: list[dict[str, Tensor]] | None = None  # the fixed validation examples

    # --- when ---------------------------------------------------------------------------
    def due(self, trainer: pl.Trainer) -> bool:
        return (
            trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and not trainer.fast_dev_run
            and trainer.current_epoch % self.every_n_epochs == 0
            and trainer.current_epoch != self.last_epoch
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.due(trainer):
            return
        self.last_epoch = trainer.current_epoch
        if not trainer.is_global_zero:
            return
        if isinstance(trainer.strategy, FSDPStrategy):
            log.warning("SampleLogger inactive: the weights are sharded (FSDP)")
            return
        started = time.time()
        datamodule = trainer.datamodule
        if isinstance(datamodule, ImageDataModule):
            path = self.log_images(trainer, pl_module, datamodule.height, datamodule.width)
        else:
            path = self.log_text(trainer, pl_module)
        log.info(f"SampleLogger: {path} ({time.time() - started:.1f} s)")

    # --- what ---------------------------------------------------------------------------
    def fixed_examples(self, trainer: pl.Trainer) -> list[dict[str, Tensor]]:
        """The first num_samples validation examples, taken once."""
        if self.examples is None:
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            dataset = loader.dataset
            self.examples = [dataset[i] for i in range(min(self.num_samples, len(dataset)))]
        return self.examples

    def generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def log_text(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        model = pl_module.model
        limit, vocab = model.cfg.max_seq_len, model.cfg.vocab_size
        examples = self.fixed_examples(trainer)
        n_new = min(self.max_new_tokens, limit // 2)
        n_prompt = min(self.prompt_len, len(examples[0]["inputs"]), limit - n_new)
        prompts = torch.stack([e["inputs"][:n_prompt] for e in examples])  # (B, n_prompt)
        out = model.generate(
            prompts.to(pl_module.device),
            n_new,
            **self.sampling,
            generator=self.generator(pl_module.device),
        )  # (B, n_prompt + n_new)
        rows = [
            [i, render_tokens(out[i, :n_prompt], vocab), render_tokens(out[i, n_prompt:], vocab)]
            for i in range(len(examples))
        ]
        epoch, step = trainer.current_epoch, trainer.global_step
        header = (
            f"# epoch {epoch}, step {step}: {len(rows)} samples of {n_new} new tokens after "
            f"{n_prompt}-token validation prompts ({self.describe_sampling()})\n"
        )
        blocks = [
            f"\n--- sample {i} ---\n[prompt]\n{prompt}\n[completion]\n{completion}\n"
            for i, prompt, completion in rows
        ]
        path = self.sample_path(trainer, "txt")
        write_text_atomically(path, header + "".join(blocks))
        for logger in self.wandb_loggers(trainer):
            logger.log_text(
                key="samples/text",
                columns=["epoch", "step", "sample", "prompt", "completion"],
                data=[[epoch, step, *row] for row in rows],
                step=step,
            )
        return path

    def log_images(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, height: int, width: int
    ) -> Path:
        examples = self.fixed_examples(trainer)
        rows_shown = height // 2
        prompts = torch.stack(
            [e["inputs"][: 1 + rows_shown * width * 3] for e in examples]
        )  # (B, 1 + P)
        images = complete_images(
            pl_module.model,
            prompts.to(pl_module.device),
            **self.sampling,
            generator=self.generator(pl_module.device),
        )  # (B, H*W*3)
        grid_rows = []
        for example, sample in zip(examples, images):
            original = raster_to_image(example["targets"], height, width)
            grid_rows.append(
                [
                    prefix_image(original, rows_shown),
                    raster_to_image(sample, height, width),
                    original,
                ]
            )
        grid = image_grid(grid_rows)
        path = self.sample_path(trainer, "png")
        write_png_atomically(path, grid)
        caption = (
            f"epoch {trainer.current_epoch}, step {trainer.global_step}: prefix | sample | "
            f"original ({self.describe_sampling()})"
        )
        for logger in self.wandb_loggers(trainer):
            logger.log_image(
                key="samples/images", images=[grid], caption=[caption], step=trainer.global_step
            )
        return path

    # --- where --------------------------------------------------------------------------
    def sample_path(self, trainer: pl.Trainer, suffix: str) -> Path:
        return (
            Path(trainer.default_root_dir)
            / "samples"
            / f"epoch={trainer.current_epoch:03d}.{suffix}"
        )

    @staticmethod
    def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def describe_sampling(self) -> str:
        shown = [f"{k}={v}" for k, v in self.sampling.items() if v is not None]
        return ", ".join([*shown, f"seed={self.seed}"])
