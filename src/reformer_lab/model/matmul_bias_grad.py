"""Bias gradients as a matmul with a row of ones: db = 1^T G for G (N, F).

autograd forms a linear layer's bias gradient with torch's reduction over the rows, which
for a bf16 (16K, 512) chunk gradient (base's FF output) ran at ~0.5 TB/s on an H200: 32 us to
read 16 MB, 24 times a base step. The same sum as one GEMV-shaped cuBLAS matmul reads G at
full bandwidth. Both round the sum to G's dtype (fp32 accumulation inside).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def column_sums(g: Tensor) -> Tensor:
    """g (N, F) summed over its rows -> (F,) in g's dtype, as 1^T g."""
    return (g.new_ones(1, g.shape[0]) @ g).view(-1)


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """F.linear(x, weight, bias) (autocast applies as it does there), whose backward forms
    the bias gradient by `column_sums`: x (..., K), weight (N, K), bias (N,) -> (..., N)."""
    return _Linear.apply(x, weight, bias)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        out = F.linear(x, weight, bias)  # under autocast: bf16 weight from autocast's cache
        ctx.save_for_backward(x, weight)
        ctx.dtypes = x.dtype, bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        x_dtype, bias_dtype = ctx.dtypes
        g = grad.reshape(-1, grad.shape[-1])  # (M, N) in the matmul's dtype
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (g @ weight.to(g.dtype)).view(*grad.shape[:-1], weight.shape[1]).to(x_dtype)
        if ctx.needs_input_grad[1]:
            low = x.reshape(-1, x.shape[-1]).to(g.dtype)  # as autocast cast it forward
            dw = (g.T @ low).to(weight.dtype)  # (N, K)
        if ctx.needs_input_grad[2]:
            db = column_sums(g).to(bias_dtype)
        return dx, dw, db
