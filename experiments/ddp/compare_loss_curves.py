"""One GPU against two (DDP) with the same global batch: the loss curves should coincide.

    python experiments/ddp/compare_loss_curves.py --devices 1 --out one.json
    python experiments/ddp/compare_loss_curves.py --devices 2 --out two.json
    python experiments/ddp/compare_loss_curves.py --compare one.json two.json

Trains the duplication task (sec 2.1) with the real LightningModule and DataModule of
reformer-lab and Lightning's DDP strategy. With a global batch of 16, one GPU takes samples
16i..16i+15 at step i; under DDP each of the two ranks takes 8 of those same samples (the
samples are sharded explicitly, see RankSlices), the hash rotations depend only on the
seed and the step, and DDP averages the gradients, so both runs optimise the same objective
step by step; they differ only by floating-point summation order. fp32 ("32-true") keeps
that difference small enough to see any real divergence.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from reformer_lab.data import DuplicationDataModule
from reformer_lab.lit.module import ReformerLitModule
from reformer_lab.model import ReformerConfig

GLOBAL_BATCH = 16


class RankSlices(Sampler[int]):
    """Rank r of W takes samples iWb + rb ... iWb + rb + b - 1 for its i-th batch of b: the
    W ranks together cover exactly the one-GPU batch i of Wb samples."""

    def __init__(self, n_batches: int, batch: int, rank: int, world: int) -> None:
        self.n_batches, self.batch, self.rank, self.world = n_batches, batch, rank, world

    def __len__(self) -> int:
        return self.n_batches * self.batch

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n_batches):
            first = (i * self.world + self.rank) * self.batch
            yield from range(first, first + self.batch)


class SlicedDuplication(DuplicationDataModule):
    """The duplication data with each rank's share of the global batch made explicit."""

    def __init__(self, steps: int, world: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps, self.world = steps, world

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler = RankSlices(self.steps, self.batch_size, rank, self.world)
        return DataLoader(self._split("train"), batch_size=self.batch_size, sampler=sampler)


class LossRecorder(pl.Callback):
    """The global mean training loss of every step (averaged over ranks), kept on rank 0."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self.losses.append(float(loss))


def train(devices: int, steps: int, out: str, accelerator: str) -> None:
    pl.seed_everything(0, workers=True)
    cfg = ReformerConfig(
        vocab_size=16,
        dim=64,
        depth=2,
        heads=4,
        max_seq_len=128,
        bucket_size=16,
        n_hashes=2,
        attention="lsh",
        causal=True,
        reversible=True,
        dropout=0.0,
        seed=0,
    )
    data = SlicedDuplication(
        steps,
        devices,
        vocab_size=16,
        w_len=63,
        n_train=steps * GLOBAL_BATCH,
        batch_size=GLOBAL_BATCH // devices,
        seed=0,
    )
    module = ReformerLitModule(
        model=cfg, metric="accuracy", optimizer=functools.partial(torch.optim.Adam, lr=3e-3)
    )
    recorder = LossRecorder()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        precision="32-true",
        max_steps=steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        use_distributed_sampler=False,  # RankSlices shards the batch itself
        callbacks=[recorder],
    )
    start = time.time()
    trainer.fit(module, datamodule=data)
    if trainer.global_rank == 0:
        result = {
            "devices": devices,
            "global_batch": GLOBAL_BATCH,
            "steps": steps,
            "gpu": torch.cuda.get_device_name() if accelerator == "gpu" else "cpu",
            "seconds": round(time.time() - start, 1),
            "losses": recorder.losses,
        }
        with open(out + ".part", "w") as f:
            json.dump(result, f)
        os.replace(out + ".part", out)


def compare(one: str, two: str) -> None:
    a, b = (json.loads(Path(path).read_text()) for path in (one, two))
    la, lb = a["losses"], b["losses"]
    n = min(len(la), len(lb))
    print(
        f"# {a['gpu']}: {a['devices']} GPU vs {b['devices']} GPUs, global batch "
        f"{a['global_batch']}, {n} steps ({a['seconds']} s vs {b['seconds']} s)"
    )
    print("| step | loss, 1 GPU | loss, 2 GPUs | difference |\n|---|---|---|---|")
    for step in sorted({0, 1, 2, 5, 10, 25, 50, 100, 150, 200, n - 1} & set(range(n))):
        print(f"| {step} | {la[step]:.5f} | {lb[step]:.5f} | {abs(la[step] - lb[step]):.2e} |")
    worst = max(abs(x - y) for x, y in zip(la[:n], lb[:n]))
    print(f"\nlargest difference over all {n} steps: {worst:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="loss_curve.json")
    parser.add_argument("--compare", nargs=2, metavar=("ONE", "TWO"))
    parser.add_argument("--accelerator", default="gpu", help="'cpu' for a smoke test")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        train(args.devices, args.steps, args.out, args.accelerator)


if __name__ == "__main__":
    main()
