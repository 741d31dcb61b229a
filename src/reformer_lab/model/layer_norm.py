"""LayerNorm of the fp32 residual stream straight into the low-precision dtype of the matmuls.

    h = ((x - mean x) / sqrt(var x + eps)) w + b        per row, in fp32 (fp64 for fp64 x),
                                                        stored in `dtype`

Under autocast, `nn.LayerNorm` returns fp32 and the attention branch casts it to bf16; the
backward then holds the fp32 gradient of the cast and LayerNorm's fp32 input gradient, two
fp32 (B, L, dim) tensors at once. This function keeps the input (the stream itself, no copy)
and one mean and 1/std per row, takes the bf16 gradient, and forms the input gradient a block
of rows at a time:

    dx = (g w - mean(g w) - x^ mean(g w x^)) / std,   dw = sum x^ g,   db = sum g
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .row_blocks import row_blocks


class _LayerNormTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, dtype: torch.dtype, grad_into: Tensor | None):
        rows = x.reshape(-1, x.shape[-1])  # (N, d), a view of the stream
        wide = torch.promote_types(x.dtype, torch.float32)  # fp32 (fp64 for fp64 streams)
        out = torch.empty(rows.shape, dtype=dtype, device=x.device)
        mean = torch.empty(rows.shape[0], dtype=wide, device=x.device)
        rstd = torch.empty_like(mean)
        for b in row_blocks(*rows.shape):
            xb = rows[b].to(wide)
            var, mu = torch.var_mean(xb, dim=-1, unbiased=False)
            r = torch.rsqrt(var + eps)
            out[b] = ((xb - mu[:, None]) * r[:, None] * weight + bias).to(dtype)
            mean[b], rstd[b] = mu, r
            del xb
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.grad_into = grad_into
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        rows, g_rows = x.reshape(-1, x.shape[-1]), grad.reshape(-1, x.shape[-1])
        into = None if ctx.grad_into is None else ctx.grad_into.view(rows.shape)  # no copy
        dx = None
        if into is None and ctx.needs_input_grad[0]:
            dx = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
        wide = mean.dtype
        dw = torch.zeros_like(weight, dtype=wide)
        db = torch.zeros_like(dw)
        for b in row_blocks(*rows.shape):
            g = g_rows[b].to(wide)  # (n, d)
            x_hat = (rows[b].to(wide) - mean[b, None]) * rstd[b, None]
            dw += (g * x_hat).sum(0)
            db += g.sum(0)
            gw = g * weight
            dx_b = rstd[b, None] * (
                gw - gw.mean(-1, keepdim=True) - x_hat * (gw * x_hat).mean(-1, keepdim=True)
            )
            if into is not None:
                into[b] += dx_b
            elif dx is not None:
                dx[b] = dx_b
            del g, x_hat, gw, dx_b
        dx = None if dx is None else dx.view(x.shape)
        return dx, dw.to(weight.dtype), db.to(weight.dtype), None, None, None


def layer_norm_to(
    x: Tensor, norm: nn.LayerNorm, dtype: torch.dtype, grad_into: Tensor | None = None
) -> Tensor:
    """norm(x) in `dtype` (..., d): the module's weight, bias and eps; x any float dtype.

    grad_into: a tensor shaped like x (viewable as rows) into which the backward ADDS x's
    gradient, block by block, instead of returning it (x then gets no gradient from here):
    the reversible recomputation adds it straight into dX2, so no (B, L, dim) gradient exists.
    """
    with torch.autocast(x.device.type, enabled=False):
        return _LayerNormTo.apply(x, norm.weight, norm.bias, norm.eps, dtype, grad_into)
