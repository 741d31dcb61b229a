"""Fused angular LSH (Triton): rotate, argmax over [xR; -xR] and combine factors in one launch.

Computes what `reformer_lab.model.attention.hashing.hash_vectors` computes in torch (read its
docstring), for up to three factors: per head h, round r and position l,

    b_f(l) = argmax([x_l R_f; -x_l R_f])          R_f: (d, n_f / 2) rotation of factor f
    bucket(l) = b_1 + n_1 b_2 + n_1 n_2 b_3,      pad_bucket where key_valid is False

with the rotated vectors kept in registers (fp32 products, as the torch path forms them): the
(B, H, R, L, n/2) tensor of the torch path never exists. One program hashes BLOCK_L positions
of one (batch, head) in every round, so x is read once; buckets are int32. With bf16 x and
bf16 rotations (the model's: `draw_rotations`) xR is one bf16 matrix instruction with fp32
accumulation, exact in its products; otherwise three tf32 ones (fp32-accurate).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_FACTORS = 3
BLOCK_L = 64
NUM_WARPS = 4


@triton.jit
def _factor_bucket(
    x,
    ROT,
    rot_base,
    offs_d,
    D: tl.constexpr,
    HALF: tl.constexpr,
    PAD: tl.constexpr,
    BF16_DOT: tl.constexpr,
):
    """argmax([xR; -xR]) of one factor for the (M, D) rows x: (M,) int32 in [0, 2 HALF).
    The largest of xR wins against the largest of -xR (minus the smallest of xR), xR on ties."""
    cols = tl.arange(0, PAD)
    col_ok = cols < HALF
    rot = tl.load(
        ROT + rot_base + offs_d[:, None] * HALF + cols[None, :], mask=col_ok[None, :], other=0.0
    )  # (D, PAD)
    if BF16_DOT:  # bf16 x bf16: exact products, fp32 sums
        xr = tl.dot(x, rot, out_dtype=tl.float32)  # (M, PAD)
    else:  # fp32-accurate: three tf32 MMAs
        xr = tl.dot(x, rot.to(tl.float32), input_precision="tf32x3")  # (M, PAD)
    top_at = tl.argmax(tl.where(col_ok[None, :], xr, float("-inf")), 1)  # (M,)
    low_at = tl.argmin(tl.where(col_ok[None, :], xr, float("inf")), 1)
    top = tl.max(tl.where(col_ok[None, :], xr, float("-inf")), 1)
    low = tl.min(tl.where(col_ok[None, :], xr, float("inf")), 1)
    return tl.where(top >= -low, top_at, low_at + HALF).to(tl.int32)


@triton.jit
def _hash_kernel(
    X,
    ROT1,
    ROT2,
    ROT3,
    VALID,
    BUCKETS,
    x_sb,
    x_sh,
    x_sl,
    x_sd,
    H,
    L,
    pad_bucket,
    R: tl.constexpr,
    D: tl.constexpr,
    HALF1: tl.constexpr,
    HALF2: tl.constexpr,
    HALF3: tl.constexpr,
    PAD1: tl.constexpr,
    PAD2: tl.constexpr,
    PAD3: tl.constexpr,
    HAS_VALID: tl.constexpr,
    BF16_DOT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_l = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (M,) positions
    offs_d = tl.arange(0, D)
    l_ok = offs_l < L
    x = tl.load(
        X + b * x_sb + h * x_sh + offs_l[:, None].to(tl.int64) * x_sl + offs_d[None, :] * x_sd,
        mask=l_ok[:, None],
        other=0.0,
    )  # (M, D)
    if not BF16_DOT:
        x = x.to(tl.float32)
    if HAS_VALID:
        real = tl.load(VALID + b * L + offs_l, mask=l_ok, other=0) != 0
    for r in range(R):
        rot_row = h * R + r  # rotations are (H, R, D, HALF) contiguous
        bucket = _factor_bucket(x, ROT1, rot_row * D * HALF1, offs_d, D, HALF1, PAD1, BF16_DOT)
        if HALF2 > 0:
            b2 = _factor_bucket(x, ROT2, rot_row * D * HALF2, offs_d, D, HALF2, PAD2, BF16_DOT)
            bucket += b2 * (2 * HALF1)
        if HALF3 > 0:
            b3 = _factor_bucket(x, ROT3, rot_row * D * HALF3, offs_d, D, HALF3, PAD3, BF16_DOT)
            bucket += b3 * (4 * HALF1 * HALF2)
        if HAS_VALID:
            bucket = tl.where(real, bucket, pad_bucket)
        tl.store(BUCKETS + (bh * R + r) * L + offs_l, bucket, mask=l_ok)


def padded_half(half: int) -> int:
    """Columns of a factor's rotation tile: n/2 padded to a power of two, at least 16 (the
    matrix instructions' smallest width); 16 for an absent factor."""
    return max(16, triton.next_power_of_2(half)) if half else 16


def hash_buckets_fused(
    x: Tensor,
    rotations: list[Tensor],
    factors: tuple[int, ...],
    key_valid: Tensor | None,
    pad_bucket: int,
) -> Tensor:
    """(B, H, L, d) any strides -> (B, H, R, L) int32 buckets; see the module docstring.

    rotations: per factor (H, R, d, n/2), bf16 or fp32; key_valid (B, L) bool or None.
    """
    B, H, L, D = x.shape
    R = rotations[0].shape[1]
    halves = [f // 2 for f in factors] + [0] * (MAX_FACTORS - len(factors))
    rots = [r.contiguous() for r in rotations] + [rotations[0]] * (MAX_FACTORS - len(factors))
    pads = [padded_half(h) for h in halves]
    buckets = torch.empty(B, H, R, L, dtype=torch.int32, device=x.device)
    valid = key_valid.contiguous().view(torch.uint8) if key_valid is not None else buckets
    # On CPU tensors (Triton's interpreter, whose tl.dot multiplies bf16 operands as raw bits in
    # triton 3.6) the same values take the fp32 path.
    bf16_dot = (
        x.device.type == "cuda"
        and x.dtype == torch.bfloat16
        and all(r.dtype == torch.bfloat16 for r in rotations)
    )
    _hash_kernel[(triton.cdiv(L, BLOCK_L), B * H)](
        x, *rots, valid, buckets, *x.stride(), H, L, pad_bucket, R=R,
        D=D, HALF1=halves[0], HALF2=halves[1], HALF3=halves[2],
        PAD1=pads[0], PAD2=pads[1], PAD3=pads[2],
        HAS_VALID=key_valid is not None, BF16_DOT=bf16_dot, BLOCK=BLOCK_L, num_warps=NUM_WARPS,
    )  # fmt: skip
    return buckets


def fused_hash_supported(x: Tensor, factors: tuple[int, ...]) -> bool:
    """Shapes and dtypes the kernel takes: head dim a power of two in [16, 256], <= 3 factors."""
    d = x.shape[-1]
    return (
        x.dim() == 4
        and 16 <= d <= 256
        and d & (d - 1) == 0
        and len(factors) <= MAX_FACTORS
        and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and x.shape[0] * x.shape[1] <= 65535
    )
