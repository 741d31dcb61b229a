"""Pixel sequences: raster order with channels interleaved, inputs shifted right by one."""

from __future__ import annotations

import numpy as np
import torch

from reformer_lab.data.images import (
    START_VALUE,
    PlanarImageDataset,
    pixel_lm_example,
    planar_to_raster,
)


def test_index_h_w_c_holds_channel_c_of_pixel_h_w():
    height, width = 4, 6  # non-square, so swapped axes would show
    planes = np.arange(3 * height * width).reshape(3, height, width)  # distinct values
    raster = planar_to_raster(planes.reshape(-1), height, width)
    assert raster.shape == (height * width * 3,)
    for h in range(height):
        for w in range(width):
            for c in range(3):
                assert raster[(h * width + w) * 3 + c] == planes[c, h, w]


def test_batched_rows_convert_independently():
    rows = np.arange(2 * 3 * 2 * 5).reshape(2, 30)  # two 2x5 images
    batched = planar_to_raster(rows, 2, 5)
    assert np.array_equal(batched[1], planar_to_raster(rows[1], 2, 5))


def test_all_pixels_are_targets_and_inputs_are_shifted_right():
    sequence = torch.arange(1, 11)
    example = pixel_lm_example(sequence)
    assert torch.equal(example["targets"], sequence)  # every dim is predicted
    assert example["inputs"][0] == START_VALUE
    assert torch.equal(example["inputs"][1:], sequence[:-1])


def test_dataset_reads_32x32_planar_rows_in_raster_order():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    example = PlanarImageDataset(rows, 32, 32)[1]
    planes = rows[1].reshape(3, 32, 32)
    targets = example["targets"]
    assert targets.dtype == torch.int64 and targets.shape == (3072,)
    for h, w, c in [(0, 0, 0), (0, 1, 2), (5, 31, 1), (31, 0, 0), (31, 31, 2), (17, 9, 1)]:
        assert targets[(h * 32 + w) * 3 + c] == planes[c, h, w]
    expected = np.stack([planes[0], planes[1], planes[2]], axis=-1).reshape(-1)
    assert np.array_equal(targets.numpy(), expected)
