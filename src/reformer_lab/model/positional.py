"""Axial positional embeddings (the paper's sec 4 / trax).

Positions are laid out on a grid `axial_shape` = (a_1, ..., a_k) in row-major order; factor i
owns a table of shape (a_i, d_i) and the embedding of a position is the concatenation of its
coordinates' rows, sum_i d_i = dim. Text uses 2 factors, images (height, width, channels), so a
pixel's position embedding is built from its row, column and colour channel. Any length up to
prod(axial_shape) works; parameters grow with sum(a_i * d_i), not with the length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class AxialPositionalEmbedding(nn.Module):
    """n -> (n, dim) embeddings of positions 0..n-1."""

    def __init__(self, axial_shape: tuple[int, ...], axial_dims: tuple[int, ...]) -> None:
        super().__init__()
        self.axial_shape = tuple(axial_shape)
        self.tables = nn.ParameterList(
            nn.Parameter(torch.randn(size, width) * 0.02)
            for size, width in zip(axial_shape, axial_dims)
        )
        strides = [math.prod(self.axial_shape[i + 1 :]) for i in range(len(self.axial_shape))]
        self.strides = tuple(strides)

    @property
    def max_positions(self) -> int:
        return math.prod(self.axial_shape)

    def forward(self, n: int, device: torch.device | None = None) -> Tensor:
        if n > self.max_positions:
            raise ValueError(
                f"sequence length {n} exceeds the {self.max_positions} positions of "
                f"axial_shape={self.axial_shape}: enlarge axial_shape"
            )
        return self.at(torch.arange(n, device=device or self.tables[0].device))

    def at(self, positions: Tensor) -> Tensor:
        """(n,) int64 positions, each below `max_positions` -> (n, dim) embeddings."""
        parts = [
            table[(positions // stride) % size]  # (n, d_i)
            for table, stride, size in zip(self.tables, self.strides, self.axial_shape)
        ]
        return torch.cat(parts, dim=-1)  # (n, dim)
