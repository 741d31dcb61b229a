"""GELU(p + b): the feed-forward's activation with its first matmul's bias, as one function
whose backward also returns the bias gradient.

    h  = z Phi(z),                 z = p + b        (fp32, stored in p's dtype)
    dz = g (Phi(z) + z phi(z)),    db = sum_rows dz

where Phi and phi are the standard normal's CDF and density (exact GELU, Hendrycks & Gimpel;
nn.GELU's default). p is the matmul's output without its bias. On CUDA (backend 'auto' or
'triton') both passes are one Triton kernel each (`reformer_lab.kernels.triton_bias_gelu`):
the backward reads g and p once and writes dz once, where autograd's GELU backward and the
bias-gradient reduction each read the (N, F) activation. The torch code below is the
reference the kernels are tested against; on the torch backend `FeedForward` does not call
this at all (nn.Linear with its bias, then nn.GELU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .fused import triton_allowed
from .row_blocks import row_blocks

FUSED_ON_CPU_UNDER_INTERPRETER = False
"""Tests set this to run the fused kernels on CPU tensors under TRITON_INTERPRET=1."""
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fused_usable(pre: Tensor, backend: str) -> bool:
    """True when the Triton kernels compute GELU(pre + b) (see the module docstring)."""
    if pre.dtype not in FUSED_DTYPES or pre.dim() < 1:
        return False
    return triton_allowed(pre, backend, FUSED_ON_CPU_UNDER_INTERPRETER)


def bias_gelu(pre: Tensor, bias: Tensor, fused: bool) -> Tensor:
    """GELU(pre + bias) in pre's dtype: pre (..., F), bias (F,); gradients for both."""
    if bias.shape != pre.shape[-1:]:
        raise ValueError(f"bias {tuple(bias.shape)} does not match pre's features {pre.shape[-1]}")
    with torch.autocast(pre.device.type, enabled=False):
        return _BiasGelu.apply(pre, bias, fused)


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, bias: Tensor, fused: bool) -> Tensor:
        ctx.fused = fused
        ctx.save_for_backward(pre, bias)
        if fused:
            from reformer_lab.kernels.triton_bias_gelu import bias_gelu_forward

            return bias_gelu_forward(pre, bias)
        return _torch_forward(pre, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, bias = ctx.saved_tensors
        if ctx.fused:
            from reformer_lab.kernels.triton_bias_gelu import bias_gelu_backward

            d_pre, d_bias = bias_gelu_backward(grad, pre, bias)
        else:
            d_pre, d_bias = _torch_backward(grad, pre, bias)
        return d_pre, d_bias.to(bias.dtype), None


def _wide(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # fp32 (fp64 for fp64 inputs)


def _torch_forward(pre: Tensor, bias: Tensor) -> Tensor:
    """GELU(pre + bias) a block of rows at a time, in fp32 (fp64 for fp64)."""
    rows = pre.reshape(-1, pre.shape[-1])  # (N, F)
    out = torch.empty_like(rows)
    b = bias.to(_wide(pre))
    for s in row_blocks(*rows.shape):
        out[s] = torch.nn.functional.gelu(rows[s].to(b.dtype) + b).to(pre.dtype)
    return out.view(pre.shape)


def _torch_backward(grad: Tensor, pre: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """(d pre in pre's dtype, d bias in fp32 / fp64) a block of rows at a time."""
    rows, g_rows = pre.reshape(-1, pre.shape[-1]), grad.reshape(-1, pre.shape[-1])
    wide = _wide(pre)
    b = bias.to(wide)
    d_pre = torch.empty_like(rows)
    d_bias = torch.zeros_like(b)
    for s in row_blocks(*rows.shape):
        z = rows[s].to(wide) + b
        cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        dz = g_rows[s].to(wide) * (cdf + z * pdf)
        d_pre[s] = dz.to(pre.dtype)
        d_bias += dz.sum(0)
        del z, cdf, pdf, dz
    return d_pre.view(pre.shape), d_bias
