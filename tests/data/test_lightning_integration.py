"""The datamodules inside a real Lightning Trainer: prepare_data -> setup -> loaders, set_epoch."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from reformer_lab.data import (
    DATAMODULES,
    DuplicationDataModule,
    SequenceDataModule,
    TextFileDataModule,
)


class RecordBatches(pl.LightningModule):
    """Trains one scalar; remembers every training batch per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list[torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).append(batch["inputs"].clone())
        return self.weight * batch["inputs"].float().mean()

    def validation_step(self, batch, batch_idx):
        assert batch["inputs"].shape == batch["targets"].shape

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_twice(datamodule_factory) -> dict[int, torch.Tensor]:
    runs = []
    for _ in range(2):
        model = RecordBatches()
        trainer = pl.Trainer(
            max_epochs=2,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, datamodule=datamodule_factory())
        runs.append({epoch: torch.cat(batches) for epoch, batches in model.seen.items()})
    assert runs[0].keys() == runs[1].keys() == {0, 1}
    for epoch in (0, 1):
        assert torch.equal(runs[0][epoch], runs[1][epoch])  # same seed -> same data
    return runs[0]


def test_trainer_sees_fresh_text_crops_each_epoch(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(256)) * 8)
    seen = fit_twice(lambda: TextFileDataModule(path=str(path), seq_len=32, batch_size=4))
    assert seen[0].shape == (58, 32)  # ceil(1843 train bytes / 32) crops per epoch
    assert not torch.equal(seen[0], seen[1])


def test_trainer_sees_fresh_duplication_sequences_each_epoch():
    seen = fit_twice(
        lambda: DuplicationDataModule(w_len=7, n_train=8, n_val=4, n_test=4, batch_size=4)
    )
    assert not torch.equal(seen[0], seen[1])


def test_registry_lists_every_datamodule():
    assert set(DATAMODULES) == {"duplication", "enwik8", "text_file", "cifar10", "imagenet64"}
    for cls in DATAMODULES.values():
        assert issubclass(cls, SequenceDataModule) and issubclass(cls, pl.LightningDataModule)
        assert cls.metric in {"bits_per_char", "bits_per_dim", "accuracy"}
