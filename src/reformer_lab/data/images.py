"""Images as byte sequences for autoregressive pixel modelling (paper sec 5, imagenet64 / CIFAR).

Storage is channel-planar, as in the CIFAR-10 and downsampled-ImageNet files: a row of 3*H*W
bytes holds the R plane, then G, then B, each H x W row-major. The model reads pixels in
raster order with channels interleaved: position (h*W + w)*3 + c holds channel c of pixel
(h, w), so axial positions (H, W, 3) factor the sequence exactly.

Shift: all 3*H*W values are predicted. The input is the sequence shifted right by one with a
0 in front (as trax's ShiftRight): inputs = [0, x_0, ..., x_{L-2}], targets = [x_0, ..., x_{L-1}].
Position 0 always holds that 0, so the model knows it is at the start from its position
embedding, and bits/dim is the mean over all L = 3*H*W dims of every image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from reformer_lab.data.base import SequenceDataModule
from reformer_lab.data.sampling import EpochShuffleSampler

START_VALUE = 0


def planar_to_raster(planar: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., 3*H*W) channel-planar -> (..., H*W*3) raster order with channels interleaved."""
    lead = planar.shape[:-1]
    planes = planar.reshape(*lead, 3, height, width)  # (..., 3, H, W)
    return np.moveaxis(planes, -3, -1).reshape(*lead, height * width * 3)  # (..., H*W*3)


def pixel_lm_example(sequence: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs shifted right with START_VALUE in front; every value of `sequence` is a target."""
    start = torch.full((1,), START_VALUE, dtype=torch.long)
    inputs = torch.cat([start, sequence[:-1]])  # (L,)
    return {"inputs": inputs, "targets": sequence}


class PlanarImageDataset(Dataset):
    """Rows of a (N, 3*H*W) uint8 channel-planar array (numpy or memmap) as pixel-LM examples."""

    def __init__(self, planar_rows: np.ndarray, height: int, width: int) -> None:
        self.rows, self.height, self.width = planar_rows, height, width  # rows: (N, 3*H*W) uint8

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        raster = planar_to_raster(np.asarray(self.rows[index]), self.height, self.width)  # (H*W*3,)
        return pixel_lm_example(torch.from_numpy(raster).long())


class ImageDataModule(SequenceDataModule):
    """Shared attributes of image datamodules: vocab 256, bits per dim, axial (H, W, 3)."""

    vocab_size = 256
    metric = "bits_per_dim"

    def __init__(
        self,
        *,
        height: int,
        width: int,
        batch_size: int,
        num_workers: int,
        seed: int,
        pin_memory: bool,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, pin_memory=pin_memory
        )
        self.height, self.width = height, width
        self.seq_len = height * width * 3
        self.axial_shape = (height, width, 3)

    def train_sampler(self) -> Sampler[int]:
        assert self.train_set is not None
        return EpochShuffleSampler(len(self.train_set), self.seed)
