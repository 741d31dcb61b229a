"""Projections of one input as one matmul, its outputs column blocks of one product.

    x (..., K), W_i (N_i, K)  ->  y_i = x W_i^T (..., N_i),   views of  x [W_1; W_2; ...]^T

Shared-QK attention projects LN(x) twice, to the queries and to the values (sec 2). As one
matmul the forward is one GEMM of width N_1 + N_2, and so are the backward's two:

    dx = [dy_1, dy_2] [W_1; W_2],    [dW_1; dW_2] = [dy_1, dy_2]^T x

where autograd would run a GEMM per projection for each and add the two (..., K) input
gradients. The output gradients are read as one tensor when they come back as the same
column blocks of one buffer (the fused LSH backward allocates them so: `rounds.gradients_like`),
and concatenated otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def joint_projection(x: Tensor, *weights: Tensor) -> tuple[Tensor, ...]:
    """(x W_1^T, x W_2^T, ...) as views of one matmul's output; autocast applies as it does
    to F.linear. x (..., K), W_i (N_i, K) -> (..., N_i) each."""
    return _JointProjection.apply(x, *weights)


def column_blocks_of_one(parts: tuple[Tensor | None, ...]) -> Tensor | None:
    """The (..., sum N_i) tensor whose consecutive column blocks `parts` (..., N_i) are, as a
    view; None unless they are exactly that (same shape but the last dim, strides, dtype; each
    starting where the one before ends; rows exactly as wide as all blocks)."""
    first = parts[0]
    if any(p is None for p in parts) or first.stride(-1) != 1:
        return None
    width = sum(p.shape[-1] for p in parts)
    if first.dim() < 2 or first.stride(-2) != width:
        return None
    offset = first.storage_offset()
    for p in parts:
        if (
            p.dtype != first.dtype
            or p.shape[:-1] != first.shape[:-1]
            or p.stride() != first.stride()
            or p.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
            or p.storage_offset() != offset
        ):
            return None
        offset += p.shape[-1]
    return first.as_strided((*first.shape[:-1], width), first.stride(), first.storage_offset())


class _JointProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, *weights: Tensor) -> tuple[Tensor, ...]:
        joined = torch.cat(weights)  # (N, K)
        y = F.linear(x, joined)  # (..., N); under autocast bf16, as F.linear of each would be
        ctx.save_for_backward(x, joined)
        ctx.widths = [w.shape[0] for w in weights]
        return tuple(y.split(ctx.widths, dim=-1))

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        x, joined = ctx.saved_tensors
        g = column_blocks_of_one(grads)
        if g is None:  # separate tensors: concatenated (a missing one is zero)
            some = next(d for d in grads if d is not None)
            g = torch.cat(
                [
                    d if d is not None else some.new_zeros(*some.shape[:-1], n)
                    for d, n in zip(grads, ctx.widths)
                ],
                dim=-1,
            )
        rows = g.reshape(-1, g.shape[-1])  # (M, N) in the matmul's dtype
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = (rows @ joined.to(g.dtype)).view(*x.shape[:-1], x.shape[-1]).to(x.dtype)
        if any(ctx.needs_input_grad[1:]):
            dw = (rows.T @ x.reshape(-1, x.shape[-1]).to(g.dtype)).to(joined.dtype)  # (N, K)
            return dx, *dw.split(ctx.widths)
        return dx, *([None] * len(ctx.widths))
