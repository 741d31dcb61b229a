"""y += sign (d + b) into the fp32 residual stream (Triton): a branch's low-precision output
and its bias added in one pass, the inverse update subtracting the very same values.

    y (B, L, D) fp32, rows with any batch and position strides, unit stride along D
    d (B, L, D) the matmul's output without its bias (bf16 under autocast), contiguous
    b (D,)      the bias, in its own dtype (fp32 parameters)
    y = y + sign (float(d) + float(b))                   sign = +1 forward, -1 recomputation

torch's `y.add_(d)` with y fp32 and d bf16 runs a mixed-dtype elementwise kernel that does not
vectorise (42 us for a (16K, 512) chunk on an H200, ~2 TB/s): here each thread loads 16-byte
vectors of both. With the bias here, the matmul before it needs no bias epilogue.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _stream_add_kernel(
    Y,
    D,
    B,
    n_rows,
    L,
    y_sb,
    y_sl,
    n_cols,
    sign,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (M,) rows r = b L + l
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (N,)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    r64 = rows.to(tl.int64)
    y_ptr = Y + ((r64 // L) * y_sb + (r64 % L) * y_sl)[:, None] + cols[None, :]
    d = tl.load(D + (r64 * n_cols)[:, None] + cols[None, :], mask=mask, other=0.0)
    step = d.to(tl.float32)
    if HAS_BIAS:
        b = tl.load(B + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        step = step + b[None, :]
    y = tl.load(y_ptr, mask=mask, other=0.0)
    tl.store(y_ptr, y + sign * step, mask=mask)


TILE_ELEMENTS = 4096
"""Elements a program updates: 16 per thread on 8 warps (4 of d's 16-byte vectors)."""


def stream_add(y: Tensor, d: Tensor, bias: Tensor | None, sign: float) -> None:
    """y += sign * (d + bias) IN PLACE: y (B, L, D) fp32 with unit D stride, d (B, L, D)
    contiguous, bias (D,) or None."""
    B, L, n_cols = y.shape
    block_n = min(triton.next_power_of_2(n_cols), 1024)
    block_m = max(1, TILE_ELEMENTS // block_n)
    grid = (triton.cdiv(B * L, block_m), triton.cdiv(n_cols, block_n))
    _stream_add_kernel[grid](
        y, d, bias if bias is not None else d, B * L, L, y.stride(0), y.stride(1), n_cols,
        float(sign), HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=8,
    )  # fmt: skip
