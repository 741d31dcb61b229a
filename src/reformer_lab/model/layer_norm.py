"""LayerNorm of the fp32 residual stream straight into the low-precision dtype of the matmuls.

    h = ((x - mean x) / sqrt(var x + eps)) w + b        per row, in fp32 (fp64 for fp64 x),
                                                        stored in `dtype`

Under autocast, `nn.LayerNorm` returns fp32 and the attention branch casts it to bf16; the
backward then holds the fp32 gradient of the cast and LayerNorm's fp32 input gradient, two
fp32 (B, L, dim) tensors at once. This function keeps the input (the stream itself, no copy)
and one mean and 1/std per row, takes the bf16 gradient, and forms the input gradient a block
of rows at a time:

    dx = (g w - mean(g w) - x^ mean(g w x^)) / std,   dw = sum x^ g,   db = sum g

On CUDA (backend 'auto' or 'triton') both passes are one fused Triton kernel each
(`reformer_lab.kernels.triton_layer_norm`): one read of the rows and one write of the output
forward; one read of x and the gradient and one read-modify-write of `grad_into` backward.
The torch code below is the CPU path and the reference the kernels are tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .fused import triton_allowed
from .row_blocks import row_blocks

FUSED_ON_CPU_UNDER_INTERPRETER = False
"""Tests set this to run the fused kernels on CPU tensors under TRITON_INTERPRET=1."""
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fused_usable(
    parts: tuple[Tensor, ...],
    dtype: torch.dtype,
    grad_into: tuple[Tensor, ...] | None,
    backend: str,
) -> bool:
    """True when the fused Triton kernels compute this call (see the module docstring)."""
    x = parts[0]
    if backend not in ("auto", "triton") or dtype not in FUSED_DTYPES:
        return False
    for t in (*parts, *(grad_into or ())):
        if t.shape != x.shape or t.dim() != 3 or t.stride(-1) != 1:
            return False
    if any(p.dtype not in FUSED_DTYPES for p in parts):
        return False
    return triton_allowed(x, backend, FUSED_ON_CPU_UNDER_INTERPRETER)


class _LayerNormTo(torch.autograd.Function):
    """LayerNorm of x = [parts] (one part, or two concatenated along the features)."""

    @staticmethod
    def forward(ctx, weight, bias, eps: float, dtype, grad_into, fused: bool, *parts):
        ctx.grad_into, ctx.fused, ctx.n_parts = grad_into, fused, len(parts)
        if fused:
            from reformer_lab.kernels.triton_layer_norm import layer_norm_forward

            out, mean, rstd = layer_norm_forward(parts, weight, bias, eps, dtype)  # (B, L, D)
            ctx.save_for_backward(weight, mean, rstd, *parts)
            return out
        x = parts[0] if len(parts) == 1 else torch.cat(parts, -1)  # (..., D): the CPU path
        out, mean, rstd = _torch_forward(x, weight, bias, eps, dtype)
        ctx.save_for_backward(weight, mean, rstd, x)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, mean, rstd, *parts = ctx.saved_tensors
        into = ctx.grad_into
        if ctx.fused:
            from reformer_lab.kernels.triton_layer_norm import layer_norm_backward

            dx, dw, db = layer_norm_backward(tuple(parts), weight, grad, mean, rstd, into)
        else:
            need_dx = into is None and any(ctx.needs_input_grad[6:])
            full, dw, db = _torch_backward(parts[0], weight, grad, mean, rstd, into, need_dx)
            dx = None if full is None else full.split(full.shape[-1] // ctx.n_parts, dim=-1)
        dx = dx if dx is not None else (None,) * ctx.n_parts
        return dw.to(weight.dtype), db.to(weight.dtype), None, None, None, None, *dx


def _torch_forward(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """(out in `dtype`, mean, rstd) a block of rows at a time (see the module docstring)."""
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
    return out.view(x.shape), mean, rstd


def _torch_backward(
    x: Tensor,
    weight: Tensor,
    grad: Tensor,
    mean: Tensor,
    rstd: Tensor,
    into: tuple[Tensor, ...] | None,
    need_dx: bool,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """(dx or None, dw, db) a block of rows at a time; with `into` (one buffer per equal
    part of the features) dx is added there instead: block by block where the buffers are
    viewable as rows, else formed whole and added at the end."""
    rows, g_rows = x.reshape(-1, x.shape[-1]), grad.reshape(-1, x.shape[-1])
    into_rows = None if into is None else [_rows_view(t) for t in into]  # no copies
    if into_rows is not None and any(t is None for t in into_rows):
        whole, dw, db = _torch_backward(x, weight, grad, mean, rstd, None, True)
        for t, part in zip(into, whole.split(into[0].shape[-1], dim=-1)):
            t += part
        return None, dw, db
    dx = torch.empty(rows.shape, dtype=x.dtype, device=x.device) if need_dx else None
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
        if into_rows is not None:
            for t, part in zip(into_rows, dx_b.split(into_rows[0].shape[-1], dim=-1)):
                t[b] += part
        elif dx is not None:
            dx[b] = dx_b
        del g, x_hat, gw, dx_b
    return None if dx is None else dx.view(x.shape), dw, db


def matmul_dtype(x: Tensor) -> torch.dtype:
    """The dtype the matmuls after a LayerNorm compute in: autocast's, else x's, so that one
    LN output in that dtype serves every projection reading it."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _rows_view(t: Tensor) -> Tensor | None:
    """t as (rows, d) without a copy, or None where its strides do not allow it."""
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return None


def layer_norm_to(
    x: Tensor | tuple[Tensor, Tensor],
    norm: nn.LayerNorm,
    dtype: torch.dtype,
    grad_into: Tensor | tuple[Tensor, Tensor] | None = None,
    backend: str = "auto",
) -> Tensor:
    """norm(x) in `dtype` (..., D): the module's weight, bias and eps; x any float dtype.

    x may be a pair (x1, x2) of equal shapes standing for their concatenation [x1; x2] along
    the last dim (D = 2 d): the fused kernels read each where it lies.
    grad_into: a tensor shaped like x (a pair for a pair; viewable as rows) into which the
    backward ADDS x's gradient, block by block, instead of returning it (x then gets no
    gradient from here): the reversible recomputation adds it straight into dX2, so no
    (B, L, dim) gradient exists.
    backend: 'auto' or 'triton' take the fused kernels where `fused_usable`, 'torch' never.
    """
    parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    into = None if grad_into is None else (
        tuple(grad_into) if isinstance(grad_into, (tuple, list)) else (grad_into,)
    )  # fmt: skip
    if len(parts) not in (1, 2) or (into is not None and len(into) != len(parts)):
        raise ValueError("x and grad_into: one tensor each, or a pair each")
    fused = fused_usable(parts, dtype, into, backend)
    with torch.autocast(parts[0].device.type, enabled=False):
        w, b, eps = norm.weight, norm.bias, norm.eps
        return _LayerNormTo.apply(w, b, eps, dtype, into, fused, *parts)
