"""LightningDataModules for the Reformer experiments (paper sec 2.1 and sec 5).

Hydra builds them from conf/data/*.yaml via `_target_`; this package never imports Hydra.
Every batch is {"inputs": (B, L) int64, "targets": (B, L) int64}, targets -100 where no loss.
"""

from reformer_lab.data.base import IGNORE_INDEX, SequenceDataModule
from reformer_lab.data.cifar10 import Cifar10DataModule
from reformer_lab.data.duplication import DuplicationDataModule
from reformer_lab.data.enwik8 import Enwik8DataModule
from reformer_lab.data.errors import DataError
from reformer_lab.data.imagenet64 import ImageNet64DataModule
from reformer_lab.data.text_file import TextFileDataModule

DATAMODULES: dict[str, type[SequenceDataModule]] = {
    "duplication": DuplicationDataModule,
    "enwik8": Enwik8DataModule,
    "text_file": TextFileDataModule,
    "cifar10": Cifar10DataModule,
    "imagenet64": ImageNet64DataModule,
}

__all__ = [
    "DATAMODULES",
    "IGNORE_INDEX",
    "Cifar10DataModule",
    "DataError",
    "DuplicationDataModule",
    "Enwik8DataModule",
    "ImageNet64DataModule",
    "SequenceDataModule",
    "TextFileDataModule",
]
