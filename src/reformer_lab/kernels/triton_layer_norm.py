"""Fused LayerNorm (Triton): the residual stream's rows normalised straight into the matmuls'
dtype, and a backward that adds the input gradient into a buffer it is given.

Computes exactly what `reformer_lab.model.layer_norm` computes in torch, a block of rows at a
time, but in one pass over the rows each way:

    forward:   mu = mean x,  rstd = 1 / sqrt(var x + eps),  y = (x - mu) rstd w + b   (fp32)
               y stored in the output dtype; mu and rstd kept per row (fp32)
    backward:  x^ = (x - mu) rstd,  gw = g w
               dx = rstd (gw - mean(gw) - x^ mean(gw x^))       stored, or added into `into`
               dw = sum_rows g x^,  db = sum_rows g              per program, summed in torch

The input may come in two parts, x = [x1; x2] along the features (the final norm of the two
residual streams, sec 3): each part is read where it lies and its gradient written into its
own buffer, so the concatenation never exists. Rows are (B, L) positions of (B, L, d) tensors
with any batch and position strides and unit stride along d: a sequence chunk of the stream is
read in place. One program owns BLOCK_M rows in the forward; in the backward a program walks
STEPS blocks of BLOCK_M rows, keeping its share of dw and db in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _row_offsets(rows, L, s_b, s_l):
    """Element offsets of rows r = b L + l of a (B, L, d) tensor with strides (s_b, s_l, 1)."""
    rows = rows.to(tl.int64)
    return (rows // L) * s_b + (rows % L) * s_l


@triton.jit
def _load_part(X, rows, row_ok, cols, col_ok, L, s_b, s_l):
    """(M, P) fp32 rows of one part; masked entries are 0."""
    mask = row_ok[:, None] & col_ok[None, :]
    ptr = X + _row_offsets(rows, L, s_b, s_l)[:, None] + cols[None, :]
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _ln_fwd_kernel(
    X1,
    X2,
    W,
    B,
    Y,
    MEAN,
    RSTD,
    n_rows,
    L,
    x1_sb,
    x1_sl,
    x2_sb,
    x2_sl,
    P,
    D,
    eps,
    TWO: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Rows of width D = P (one part) or 2 P (two parts, TWO); Y is (n_rows, D) contiguous."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (M,)
    cols = tl.arange(0, BLOCK_P)  # (P,) columns of one part
    row_ok = rows < n_rows
    col_ok = cols < P
    mask = row_ok[:, None] & col_ok[None, :]
    x1 = _load_part(X1, rows, row_ok, cols, col_ok, L, x1_sb, x1_sl)  # (M, P)
    total = tl.sum(x1, 1)
    if TWO:
        x2 = _load_part(X2, rows, row_ok, cols, col_ok, L, x2_sb, x2_sl)
        total += tl.sum(x2, 1)
    mean = total / D
    xc1 = tl.where(mask, x1 - mean[:, None], 0.0)
    squares = tl.sum(xc1 * xc1, 1)
    if TWO:
        xc2 = tl.where(mask, x2 - mean[:, None], 0.0)
        squares += tl.sum(xc2 * xc2, 1)
    rstd = 1.0 / tl.sqrt(squares / D + eps)  # (M,)
    y_rows = Y + rows.to(tl.int64)[:, None] * D + cols[None, :]
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = xc1 * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_rows, y.to(Y.dtype.element_ty), mask=mask)
    if TWO:
        w = tl.load(W + P + cols, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.load(B + P + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = xc2 * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(y_rows + P, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _part_grads(X, G, W, rows, row_ok, cols, col_ok, mean, rstd, L, s_b, s_l, D):
    """x^ and g w of one part, and the gradient g as fp32: 3 x (M, P)."""
    mask = row_ok[:, None] & col_ok[None, :]
    x = _load_part(X, rows, row_ok, cols, col_ok, L, s_b, s_l)
    g = tl.load(G + rows.to(tl.int64)[:, None] * D + cols[None, :], mask=mask, other=0.0)
    g = g.to(tl.float32)  # G is (n_rows, D) contiguous; the part's columns start at G
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    x_hat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    return x_hat, g * w[None, :], g


@triton.jit
def _dx_rows(DX, rows, row_ok, cols, col_ok, L, s_b, s_l, ACCUMULATE: tl.constexpr):
    """(pointers, mask, what the rows of DX hold now as fp32, or 0 without ACCUMULATE): read
    with x and g, before the row reductions, so that its latency overlaps theirs."""
    mask = row_ok[:, None] & col_ok[None, :]
    ptr = DX + _row_offsets(rows, L, s_b, s_l)[:, None] + cols[None, :]
    held = 0.0
    if ACCUMULATE:
        held = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    return ptr, mask, held


@triton.jit
def _ln_bwd_kernel(
    X1,
    X2,
    W,
    G,
    MEAN,
    RSTD,
    DX1,
    DX2,
    DW_PART,
    DB_PART,
    n_rows,
    L,
    x1_sb,
    x1_sl,
    x2_sb,
    x2_sl,
    d1_sb,
    d1_sl,
    d2_sb,
    d2_sl,
    P,
    D,
    TWO: tl.constexpr,
    STEPS: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """dx per part (stored, or added into DX1/DX2 with ACCUMULATE), and this program's
    partial dw, db: DW_PART, DB_PART are (programs, D)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_P)
    col_ok = cols < P
    dw1 = tl.zeros([BLOCK_P], tl.float32)
    db1 = tl.zeros([BLOCK_P], tl.float32)
    dw2 = tl.zeros([BLOCK_P], tl.float32)
    db2 = tl.zeros([BLOCK_P], tl.float32)
    for i in range(STEPS):
        rows = pid * (STEPS * BLOCK_M) + i * BLOCK_M + tl.arange(0, BLOCK_M)  # (M,)
        row_ok = rows < n_rows
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        xh1, gw1, g1 = _part_grads(
            X1, G, W, rows, row_ok, cols, col_ok, mean, rstd, L, x1_sb, x1_sl, D
        )
        ptr1, mask1, held1 = _dx_rows(DX1, rows, row_ok, cols, col_ok, L, d1_sb, d1_sl, ACCUMULATE)
        c_hat = tl.sum(gw1 * xh1, 1)  # (M,)
        c_one = tl.sum(gw1, 1)
        if TWO:
            xh2, gw2, g2 = _part_grads(
                X2, G + P, W + P, rows, row_ok, cols, col_ok, mean, rstd, L, x2_sb, x2_sl, D
            )
            ptr2, mask2, held2 = _dx_rows(
                DX2, rows, row_ok, cols, col_ok, L, d2_sb, d2_sl, ACCUMULATE
            )
            c_hat += tl.sum(gw2 * xh2, 1)
            c_one += tl.sum(gw2, 1)
        c_hat = c_hat / D
        c_one = c_one / D
        dx1 = rstd[:, None] * (gw1 - c_one[:, None] - xh1 * c_hat[:, None]) + held1
        tl.store(ptr1, dx1.to(DX1.dtype.element_ty), mask=mask1)
        dw1 += tl.sum(g1 * xh1, 0)
        db1 += tl.sum(g1, 0)
        if TWO:
            dx2 = rstd[:, None] * (gw2 - c_one[:, None] - xh2 * c_hat[:, None]) + held2
            tl.store(ptr2, dx2.to(DX2.dtype.element_ty), mask=mask2)
            dw2 += tl.sum(g2 * xh2, 0)
            db2 += tl.sum(g2, 0)
    tl.store(DW_PART + pid * D + cols, dw1, mask=col_ok)
    tl.store(DB_PART + pid * D + cols, db1, mask=col_ok)
    if TWO:
        tl.store(DW_PART + pid * D + P + cols, dw2, mask=col_ok)
        tl.store(DB_PART + pid * D + P + cols, db2, mask=col_ok)


TILE_ELEMENTS = 1024
"""Elements of one program's tile, over all parts (8 per thread on 4 warps): at 2048, the
backward of 64-wide rows spilled registers for sm_90 (tests/test_kernel_compile.py)."""
WIDE_TILE_ELEMENTS = 4096
"""The same for one part of 256 features or more, which compiles without spills at 4096: its
backward took 140 us at base 64K on an H200, against 264 us with 1024-element tiles (two rows
a step: too little work in flight per program)."""


def _shape(part_width: int, parts: int = 1) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_P, num_warps): rows of TILE_ELEMENTS (WIDE_TILE_ELEMENTS for one wide
    part), each part padded to a power of 2."""
    block_p = triton.next_power_of_2(part_width)
    tile = WIDE_TILE_ELEMENTS if parts == 1 and block_p >= 256 else TILE_ELEMENTS
    block_m = max(1, min(128, tile // (parts * block_p)))
    return block_m, block_p, 8 if parts * block_p >= 4096 else 4


def _rows(x: Tensor) -> tuple[int, int, int, int]:
    """(n_rows, L, batch stride, position stride) of a (B, L, d) tensor with unit d stride."""
    B, L, _ = x.shape
    return B * L, L, x.stride(0), x.stride(1)


def _pair(parts: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, bool]:
    if len(parts) not in (1, 2) or any(p.shape != parts[0].shape for p in parts):
        raise ValueError("one or two (B, L, d) parts of the same shape")
    return parts[0], parts[-1], len(parts) == 2


def layer_norm_forward(
    parts: tuple[Tensor, ...], weight: Tensor, bias: Tensor, eps: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """parts: x, or (x1, x2) with x = [x1; x2], each (B, L, P) with unit P stride ->
    y (B, L, D) contiguous in `dtype` (D = P or 2 P), mean and rstd (B*L,) fp32."""
    x1, x2, two = _pair(parts)
    n_rows, L, s1_b, s1_l = _rows(x1)
    _, _, s2_b, s2_l = _rows(x2)
    B, _, P = x1.shape
    D = 2 * P if two else P
    y = torch.empty(B, L, D, dtype=dtype, device=x1.device)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x1.device)
    rstd = torch.empty_like(mean)
    block_m, block_p, warps = _shape(P, len(parts))
    _ln_fwd_kernel[(triton.cdiv(n_rows, block_m),)](
        x1, x2, weight, bias, y, mean, rstd, n_rows, L, s1_b, s1_l, s2_b, s2_l, P, D, eps,
        TWO=two, BLOCK_M=block_m, BLOCK_P=block_p, num_warps=warps,
    )  # fmt: skip
    return y, mean, rstd


def _steps(device: torch.device, n_blocks: int) -> int:
    """Row blocks per backward program: a power of two (few compiled variants) that leaves
    about four programs per multiprocessor (their dw, db partials are summed after)."""
    sms = (
        torch.cuda.get_device_properties(device).multi_processor_count
        if device.type == "cuda"
        else 2
    )
    return triton.next_power_of_2(triton.cdiv(n_blocks, 4 * sms))


def layer_norm_backward(
    parts: tuple[Tensor, ...],
    weight: Tensor,
    grad: Tensor,
    mean: Tensor,
    rstd: Tensor,
    into: tuple[Tensor, ...] | None,
) -> tuple[tuple[Tensor, ...] | None, Tensor, Tensor]:
    """(dx per part, dw, db) for `layer_norm_forward`'s output gradient `grad` (B, L, D).

    into: one buffer per part, (B, L, P) with unit P stride, to which dx is ADDED (dx is
    then None); otherwise dx is new contiguous tensors in the parts' dtype. dw, db: fp32 (D,).
    """
    x1, x2, two = _pair(parts)
    n_rows, L, s1_b, s1_l = _rows(x1)
    _, _, s2_b, s2_l = _rows(x2)
    P = x1.shape[-1]
    grad = grad.contiguous()
    if into is None:
        dx = tuple(torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in parts)
    else:
        dx = tuple(into)
        _pair(dx)
    d1, d2 = dx[0], dx[-1]
    block_m, block_p, warps = _shape(P, len(parts))
    steps = _steps(x1.device, triton.cdiv(n_rows, block_m))
    programs = triton.cdiv(n_rows, steps * block_m)
    D = grad.shape[-1]
    sums = torch.empty(2, programs, D, dtype=torch.float32, device=x1.device)
    _ln_bwd_kernel[(programs,)](
        x1, x2, weight, grad, mean, rstd, d1, d2, sums[0], sums[1], n_rows, L,
        s1_b, s1_l, s2_b, s2_l, d1.stride(0), d1.stride(1), d2.stride(0), d2.stride(1), P, D,
        TWO=two, STEPS=steps, ACCUMULATE=into is not None, BLOCK_M=block_m, BLOCK_P=block_p,
        num_warps=warps,
    )  # fmt: skip
    dw, db = sums.sum(1)
    return (None if into is not None else dx), dw, db
