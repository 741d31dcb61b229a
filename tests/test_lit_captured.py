"""`ReformerLitModule(capture_train_step=True)` trains as the ordinary module does: a real
Lightning Trainer on one GPU, the same batches, losses, learning rates, hash steps and final
weights as the eager run, with the Trainer's gradient clipping moved into the module. The last
batch is shorter, so the eager fallback of a captured step runs too. Needs CUDA."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from reformer_lab.lit import ReformerLitModule
from reformer_lab.lit import module as lit_module
from reformer_lab.model import ReformerConfig
from reformer_lab.model.attention.lsh import LSHAttentionCore
from reformer_lab.model.captured_step import CapturedTrainingStep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MODEL = ReformerConfig(
    vocab_size=16, dim=64, depth=2, heads=4, max_seq_len=128, bucket_size=16, n_hashes=2,
    dropout=0.0,
)  # fmt: skip
CLIP = 0.5


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


class CountingStep(CapturedTrainingStep):
    replays = eager_steps = 0

    def __call__(self, inputs, targets):
        CountingStep.replays += 1
        return super().__call__(inputs, targets)

    def eager(self, inputs, targets):
        CountingStep.eager_steps += 1
        return super().eager(inputs, targets)


def batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for b in (2, 2, 2, 2, 2, 2, 1):  # the last one shorter: not the captured shape
        tokens = torch.randint(0, 16, (b, 129), generator=g)
        out.append({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
    return out


def fit(captured: bool) -> tuple[ReformerLitModule, list[float], float, list[float]]:
    torch.manual_seed(0)
    module = ReformerLitModule(
        MODEL,
        optimizer=functools.partial(torch.optim.SGD, lr=1.0),  # linear in the gradients
        scheduler=functools.partial(
            torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda s: 1 / (1 + s)
        ),
        capture_train_step=captured,
        gradient_clip_val=CLIP if captured else None,
    )
    losses, validations = Losses(), Validations()
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, precision="bf16-mixed", max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[losses, validations], gradient_clip_val=None if captured else CLIP,
        val_check_interval=3, num_sanity_val_steps=0,
    )  # fmt: skip
    held_out = batches()[:2]  # validated between the captured steps too
    trainer.fit(
        module, DataLoader(batches(), batch_size=None), DataLoader(held_out, batch_size=None)
    )
    assert trainer.global_step == len(batches())
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    return module, losses.losses, lr, validations.losses


class Validations(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.losses.append(float(trainer.callback_metrics["val/loss"]))


def test_captured_training_equals_eager_training(monkeypatch):
    monkeypatch.setattr(lit_module, "CapturedTrainingStep", CountingStep)
    CountingStep.replays = CountingStep.eager_steps = 0
    eager, eager_losses, eager_lr, eager_val = fit(captured=False)
    captured, captured_losses, captured_lr, captured_val = fit(captured=True)
    assert len(eager_val) >= 2 and len(captured_val) == len(eager_val)  # after steps 3, 6
    torch.testing.assert_close(captured_val, eager_val, rtol=2e-2, atol=0)
    assert (CountingStep.replays, CountingStep.eager_steps) == (6, 1)
    assert captured._captured is None  # released at the end of training
    torch.testing.assert_close(captured_losses[0], eager_losses[0], rtol=1e-3, atol=0)
    torch.testing.assert_close(captured_losses, eager_losses, rtol=2e-2, atol=0)
    assert captured_lr == pytest.approx(eager_lr)
    cores = [
        [m.steps_counted for m in module.modules() if isinstance(m, LSHAttentionCore)]
        for module in (eager, captured)
    ]
    assert cores[0] == cores[1] == [7, 7]  # every step hashed with its own rotations
    start = initial_weights()
    trained = torch.cat(
        [(a.detach().cpu() - s).flatten() for a, s in zip(eager.parameters(), start)]
    )
    apart = torch.cat(
        [
            (b.cpu() - a.cpu()).detach().flatten()
            for a, b in zip(eager.parameters(), captured.parameters())
        ]
    )
    assert trained.norm() > 1e-3  # the weights did move
    # bf16 rounding apart, the same updates (the same clipped gradients, stepped alike)
    assert apart.norm() < 0.02 * trained.norm(), (apart.norm(), trained.norm())


def initial_weights() -> list[torch.Tensor]:
    """The initial weights of `fit`'s modules (same seed), on the CPU, where Lightning leaves
    a module after fit."""
    torch.manual_seed(0)
    return [p.detach() for p in ReformerLitModule(MODEL).parameters()]
