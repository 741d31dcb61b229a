"""Position-wise feed-forward, optionally applied one sequence chunk at a time (sec 3).

Chunking changes nothing in the result (the layer acts on each position alone); it bounds the
(L, d_ff) hidden activation to (L / ff_chunks, d_ff), which dominates memory for long inputs.

With the Triton backend the first matmul runs without its bias and `bias_gelu` adds it, so
the GELU backward and the bias gradient are one pass over the (L, d_ff) activation; the second
matmul's bias gradient is a matmul with a row of ones (`matmul_bias_grad`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bias_gelu import bias_gelu, fused_usable
from .matmul_bias_grad import linear


def dropout_layer(p: float) -> nn.Module:
    """nn.Dropout(p), or nothing at all when p is 0 (no kernel launched, no RNG state kept)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class FeedForward(nn.Module):
    """(B, L, dim) -> (B, L, dim): Linear -> GELU -> dropout -> Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float, backend: str = "torch") -> None:
        """backend: 'auto' or 'triton' take `bias_gelu`'s kernels where it is usable."""
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), dropout_layer(dropout), nn.Linear(hidden, dim)
        )
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        if not fused_usable(x, self.backend):
            return self.net(x)
        second = self.net[-1]
        return linear(self.hidden(x), second.weight, second.bias)  # db by one matmul

    def hidden(self, x: Tensor) -> Tensor:
        """The second matmul's input, dropout(GELU(x W1^T + b1)): (B, L, dim) -> (B, L, hidden)."""
        first, act, dropout, _ = self.net
        if not fused_usable(x, self.backend):
            return dropout(act(first(x)))
        pre = F.linear(x, first.weight)  # (B, L, hidden), the bias comes in bias_gelu
        return dropout(bias_gelu(pre, first.bias, fused=True))


def sequence_chunks(length: int, n_chunks: int) -> list[slice]:
    """`n_chunks` (or fewer) contiguous slices covering range(length)."""
    size = -(-length // max(1, n_chunks))
    return [slice(start, min(start + size, length)) for start in range(0, length, size)]


def apply_chunked(fn, x: Tensor, n_chunks: int) -> Tensor:
    """fn applied to x[:, s] for each sequence chunk s, in order; (B, L, ...) -> (B, L, ...)."""
    if n_chunks <= 1:
        return fn(x)
    return torch.cat([fn(x[:, s]) for s in sequence_chunks(x.shape[1], n_chunks)], dim=1)
