"""ReformerLitModule, its token-weighted metrics, the precision choice and the LR schedules."""

from __future__ import annotations

import functools
import itertools
import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from reformer_lab.lit import ReformerLitModule, TokenMetrics, default_precision, resolve_precision
from reformer_lab.lit.schedules import warmup_cosine, warmup_rsqrt
from reformer_lab.model import ReformerConfig

TINY_MODEL = ReformerConfig(
    vocab_size=11, dim=32, depth=1, heads=2, max_seq_len=64, bucket_size=16, n_hashes=2
)


def batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Batches of different sizes with different numbers of counted targets."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        b, length = 2 + i, 40 + 8 * i
        inputs = torch.randint(0, 11, (b, length), generator=g)  # (b, L)
        targets = torch.randint(0, 11, (b, length), generator=g)  # (b, L)
        targets[:, : 5 * i + 3] = -100  # fewer counted targets in some batches
        out.append({"inputs": inputs, "targets": targets})
    return out


def test_token_metrics_weight_every_token_equally() -> None:
    metrics = TokenMetrics("bits_per_char")
    losses, counts, correct = [0.5, 2.0, 1.25], [10, 1, 300], [3, 1, 150]
    for loss, n, c in zip(losses, counts, correct):
        metrics.update(torch.tensor(loss), torch.tensor(n), torch.tensor(c))
    nats = sum(loss * n for loss, n in zip(losses, counts)) / sum(counts)
    assert metrics.loss.compute().item() == pytest.approx(nats, rel=1e-6)  # not the mean of means
    assert metrics.bits.compute().item() == pytest.approx(nats / math.log(2), rel=1e-6)
    assert metrics.accuracy.compute().item() == pytest.approx(sum(correct) / sum(counts), rel=1e-6)
    assert set(metrics.named_metrics("val")) == {"val/loss", "val/bits_per_char", "val/accuracy"}
    assert set(TokenMetrics("accuracy").named_metrics("test")) == {"test/loss", "test/accuracy"}
    with pytest.raises(ValueError, match="metric='perplexity' is unknown"):
        TokenMetrics("perplexity")


def test_validation_metrics_equal_a_brute_force_sum_over_tokens() -> None:
    torch.manual_seed(0)
    module = ReformerLitModule(TINY_MODEL, metric="bits_per_dim")
    data = batches(3)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    logged = trainer.validate(module, DataLoader(data, batch_size=None), verbose=False)[0]

    module.eval()
    total_nats = total_tokens = total_correct = 0.0
    with torch.no_grad():
        for batch in data:
            logits = module.model(batch["inputs"])  # (b, L, vocab)
            counted = batch["targets"] != -100
            nll = torch.nn.functional.cross_entropy(
                logits[counted], batch["targets"][counted], reduction="sum"
            )
            total_nats += nll.item()
            total_tokens += counted.sum().item()
            total_correct += (logits.argmax(-1)[counted] == batch["targets"][counted]).sum().item()
    assert logged["val/loss"] == pytest.approx(total_nats / total_tokens, rel=1e-5)
    assert logged["val/bits_per_dim"] == pytest.approx(
        total_nats / total_tokens / math.log(2), rel=1e-5
    )
    assert logged["val/accuracy"] == pytest.approx(total_correct / total_tokens, rel=1e-6)


def test_eval_n_hashes_reaches_the_model_in_validation_and_test_only() -> None:
    module = ReformerLitModule(
        TINY_MODEL, optimizer=functools.partial(torch.optim.SGD, lr=0.0), eval_n_hashes=6
    )
    seen: list[tuple[bool, int | None]] = []
    original = module.model.loss

    def spy(*args, **kwargs):
        seen.append((module.training, kwargs.get("n_hashes")))
        return original(*args, **kwargs)

    module.model.loss = spy
    loader = DataLoader(batches(1), batch_size=None)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        max_steps=1,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader, loader)
    trainer.test(module, loader, verbose=False)
    assert (True, None) in seen  # training: the model's own n_hashes
    assert seen.count((False, 6)) == 2  # one validation and one test batch with 6 rounds


def test_checkpoint_hyperparameters_rebuild_the_same_model(tmp_path) -> None:
    module = ReformerLitModule(
        TINY_MODEL, metric="accuracy", eval_n_hashes=3, run_config={"data": {"_target_": "x"}}
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        max_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ReformerLitModule.load_from_checkpoint(tmp_path / "m.ckpt", eval_n_hashes=8)
    assert loaded.model.cfg == module.model.cfg
    assert loaded.eval_n_hashes == 8 and loaded.hparams.run_config == {"data": {"_target_": "x"}}
    for (name, a), (_, b) in zip(module.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_optimizer_and_scheduler_come_from_the_factories() -> None:
    module = ReformerLitModule(
        TINY_MODEL,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1),
        scheduler=functools.partial(warmup_cosine, warmup_steps=10, total_steps=100),
    )
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.1
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(module.parameters()))
    assert configured["lr_scheduler"]["interval"] == "step"
    with pytest.raises(RuntimeError, match="no optimizer"):
        ReformerLitModule(TINY_MODEL).configure_optimizers()
    with pytest.raises(ValueError, match="eval_n_hashes=0"):
        ReformerLitModule(TINY_MODEL, eval_n_hashes=0)


def test_warmup_cosine_and_rsqrt_schedules() -> None:
    def lrs(make, steps):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, seen = make(opt), []
        for _ in range(steps):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return seen

    cosine = lrs(
        functools.partial(warmup_cosine, warmup_steps=4, total_steps=14, min_lr_ratio=0.1), 15
    )
    assert cosine[0] == pytest.approx(0.25) and cosine[3] == pytest.approx(0.8125)  # linear warmup
    assert cosine[4] == pytest.approx(1.0) and cosine[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(cosine[4:]))  # decays monotonically
    rsqrt = lrs(functools.partial(warmup_rsqrt, warmup_steps=4), 17)
    assert rsqrt[2] == pytest.approx(0.5) and rsqrt[4] == pytest.approx(1.0)
    assert rsqrt[16] == pytest.approx(0.5)  # sqrt(4 / 16)
    with pytest.raises(ValueError, match=r"trainer\.max_steps"):
        warmup_cosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10, -1)


@pytest.mark.parametrize(
    ("cuda", "bf16", "expected"),
    [(False, False, "32-true"), (True, True, "bf16-mixed"), (True, False, "16-mixed")],
)
def test_default_precision_follows_the_hardware(monkeypatch, cuda, bf16, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert default_precision() == expected
    assert resolve_precision("auto") == expected and resolve_precision(None) == expected
    assert resolve_precision("16-mixed") == "16-mixed"  # an explicit choice is kept
