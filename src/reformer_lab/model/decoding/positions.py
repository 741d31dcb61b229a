"""The axial positional embedding of one position, without building the whole table.

`AxialPositionalEmbedding(n)` returns rows 0..n-1; decoding needs only row t, so this reads
the factor tables directly: row t concatenates table_i[(t // stride_i) % size_i] (positional.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..positional import AxialPositionalEmbedding


def position_row(pos_emb: AxialPositionalEmbedding, t: int) -> Tensor:
    """Position t's embedding, (dim,); equal to pos_emb(t + 1)[t]."""
    if not 0 <= t < pos_emb.max_positions:
        raise ValueError(f"position {t} is outside the {pos_emb.max_positions} axial positions")
    parts = [
        table[(t // stride) % size]  # (d_i,)
        for table, stride, size in zip(pos_emb.tables, pos_emb.strides, pos_emb.axial_shape)
    ]
    return torch.cat(parts, dim=-1)  # (dim,)
