"""Bias + GELU of the feed-forward's first matmul (Triton), and a backward that forms the bias
gradient in the same pass as the pre-activation gradient.

Computes exactly what `reformer_lab.model.bias_gelu` computes in torch, on (N, F) rows:

    forward:   z = p + b (fp32),  h = z Phi(z) = z (1 + erf(z / sqrt 2)) / 2    stored in p's dtype
               (erf to 1.5e-7 by Abramowitz & Stegun 7.1.26: one exp, one reciprocal)
    backward:  dz = g (Phi(z) + z phi(z)),  phi(z) = exp(-z^2 / 2) / sqrt(2 pi)  stored
               db = sum_rows dz                                       per program, summed in torch

p is the matmul's output without its bias. Unfused, the bias rides in the GEMM's epilogue, GELU
reads and writes the (N, F) activation once more, its backward once more, and the bias
gradient is a separate reduction reading dz again (F = 2048 at base: 64 MB a 16K-row chunk).
Here the backward reads g and p once and writes dz once; each program walks STEPS blocks of
BLOCK_M rows for one BLOCK_F-column slice, keeping its share of db in registers (a (BLOCK_M,
BLOCK_F) accumulator, summed over its rows at the end).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
# erf(a) = 1 - t (A1 + t (A2 + t (A3 + t (A4 + t A5)))) exp(-a^2), t = 1 / (1 + P a), a >= 0:
# Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7 (bf16 resolves 4e-3). One exp and one
# reciprocal where libdevice's erff spends ~30 instructions; exp(-z^2 / 2) doubles as phi's.
P_AS = tl.constexpr(0.3275911)
A1 = tl.constexpr(0.254829592)
A2 = tl.constexpr(-0.284496736)
A3 = tl.constexpr(1.421413741)
A4 = tl.constexpr(-1.453152027)
A5 = tl.constexpr(1.061405429)


@triton.jit
def _cdf_and_pdf(z):
    """(Phi(z), phi(z)) of fp32 z; Phi within 1e-7 absolute (see A1..A5), so GELU within
    1e-7 |z|."""
    a = tl.abs(z) * INV_SQRT2
    t = 1.0 / (1.0 + P_AS * a)
    poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))))
    gauss = tl.exp(-a * a)  # exp(-z^2 / 2)
    tail = 0.5 * poly * gauss  # Phi(-|z|), formed without cancellation
    return tl.where(z < 0, tail, 1.0 - tail), INV_SQRT_2PI * gauss


@triton.jit
def _tile(rows, cols, n_rows, n_cols):
    """Element offsets (int64) and mask of rows x cols of a contiguous (n_rows, n_cols) tensor."""
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return rows.to(tl.int64)[:, None] * n_cols + cols[None, :], mask


@triton.jit
def _bias_gelu_fwd_kernel(P, B, H, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (M,)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)  # (F_blk,)
    offsets, mask = _tile(rows, cols, n_rows, n_cols)
    b = tl.load(B + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    z = tl.load(P + offsets, mask=mask, other=0.0).to(tl.float32) + b[None, :]
    cdf, _ = _cdf_and_pdf(z)
    h = z * cdf
    tl.store(H + offsets, h.to(H.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_bwd_kernel(
    G,
    P,
    B,
    DZ,
    DB_PART,
    n_rows,
    n_cols,
    STEPS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    """DZ = G * GELU'(P + B); DB_PART (programs along rows, n_cols): this program's column sums."""
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    b = tl.load(B + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    db = tl.zeros([BLOCK_M, BLOCK_F], tl.float32)  # summed over rows once, after the loop:
    for i in range(STEPS):  # a sum across the block's rows each step (warps) stalled it 4x
        rows = pid * (STEPS * BLOCK_M) + i * BLOCK_M + tl.arange(0, BLOCK_M)
        offsets, mask = _tile(rows, cols, n_rows, n_cols)
        z = tl.load(P + offsets, mask=mask, other=0.0).to(tl.float32) + b[None, :]
        g = tl.load(G + offsets, mask=mask, other=0.0).to(tl.float32)
        cdf, pdf = _cdf_and_pdf(z)
        dz = tl.where(mask, g * (cdf + z * pdf), 0.0)
        tl.store(DZ + offsets, dz.to(DZ.dtype.element_ty), mask=mask)
        db += dz
    tl.store(DB_PART + pid.to(tl.int64) * n_cols + cols, tl.sum(db, 0), mask=cols < n_cols)


TILE_ELEMENTS = 4096
"""Elements of one program's tile (16 per thread on 8 warps)."""


class BackwardShape(NamedTuple):
    """The backward's launch: BLOCK_M x BLOCK_F tiles, STEPS row blocks a program."""

    block_m: int
    block_f: int
    steps: int
    num_warps: int


def _shape(F: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_F, num_warps) for rows of F features."""
    block_f = min(256, triton.next_power_of_2(F))
    return max(1, TILE_ELEMENTS // block_f), block_f, 8


def backward_shape(F: int) -> BackwardShape:
    """The default backward launch for rows of F features: 16 x 64 tiles, 16 a program, on 8
    warps (the fastest shape for base's 16K x 2048 FF chunk in bias_gelu_sweep.py on an H200:
    72.7 us against autograd's GELU backward + bias sum at 96 us; tiny's 16K x 256: 13.3 us,
    the best 12.5, autograd's 30)."""
    return BackwardShape(16, min(64, triton.next_power_of_2(F)), 16, 8)


def _rows(t: Tensor, F: int) -> Tensor:
    """t as contiguous (N, F) rows (a view when it already is)."""
    return t.contiguous().view(-1, F)


def bias_gelu_forward(pre: Tensor, bias: Tensor) -> Tensor:
    """GELU(pre + bias) in pre's dtype; pre (..., F), bias (F,)."""
    F = pre.shape[-1]
    rows = _rows(pre, F)
    out = torch.empty_like(rows)
    block_m, block_f, warps = _shape(F)
    grid = (triton.cdiv(rows.shape[0], block_m), triton.cdiv(F, block_f))
    _bias_gelu_fwd_kernel[grid](
        rows, bias, out, rows.shape[0], F, BLOCK_M=block_m, BLOCK_F=block_f, num_warps=warps
    )
    return out.view(pre.shape)


def bias_gelu_backward(
    grad: Tensor, pre: Tensor, bias: Tensor, shape: BackwardShape | None = None
) -> tuple[Tensor, Tensor]:
    """(d pre in pre's dtype, d bias fp32 (F,)) for the output gradient `grad` (..., F);
    shape: the launch (default `backward_shape(F)`)."""
    F = pre.shape[-1]
    rows, g = _rows(pre, F), _rows(grad, F)
    dz = torch.empty_like(rows)
    block_m, block_f, steps, warps = shape or backward_shape(F)
    programs = triton.cdiv(rows.shape[0], steps * block_m)
    partial = torch.empty(programs, F, dtype=torch.float32, device=pre.device)
    _bias_gelu_bwd_kernel[(programs, triton.cdiv(F, block_f))](
        g, rows, bias, dz, partial, rows.shape[0], F,
        STEPS=steps, BLOCK_M=block_m, BLOCK_F=block_f, num_warps=warps,
    )  # fmt: skip
    return dz.view(pre.shape), partial.sum(0)
