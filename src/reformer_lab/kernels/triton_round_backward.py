"""A hash round's whole backward in one launch, for shared-QK keys (Triton).

The two-kernel backward (`triton_rounds`: `_round_dkdv_kernel` walks the queries of each key
tile, `_round_dq_kernel` the keys of each query tile) forms every score block twice and
gathers every row through `order` six times a round. With shared QK (sec 2) a slot chunk's
keys are its own query rows normalised, k_c = x_c / |x_c|, so one program can walk a run of
SPAN consecutive slot chunks of one head, downwards, and form each block (query chunk, key
chunk) inside the run once:

    iteration c (from c0 + SPAN - 1 down to c0; keys: slot chunk c, its own rows x_c)
        block (c+1, c): chunk c+1's queries look back at these keys -> dk_c, dv_c, and the
                        look-back part of dq_{c+1}, which completes dx_{c+1}: stored
        block (c, c):   the chunk against itself -> dk_c, dv_c complete (dv_c stored), and
                        dq_c's own part: dx_c = dq_c + dk_c carried back through the
                        normalisation, carried down to iteration c - 1

Chunk c's rows, dO and statistics, gathered for block (c, c), are the queries of the next
iteration's block (c, c-1): inside a run each row is gathered once a round, and a chunk takes
10 tile products instead of 14. Walking down, at most three fp32 (C, d) tiles are alive (dk,
dv and one dq), against four walking up. The queries above the run (chunk c0 + SPAN) are
gathered first: their look-back gives the top chunk's dk, dv, and their dq belongs to the run
above. The bottom chunk's look-back block (c0, c0-1) is formed last, for its dq alone (3
products), while the run below forms the same block for dk, dv. SPAN trades that overlap
against parallelism; with SPAN = 1 (base's shape) a chunk takes 13 products and 7 tile
gathers, against 14 and 12. Chunk 0's look-back is virtual (k = v = 0, masked) and adds
nothing, as in the two kernels.

Per block, queries i and keys j of the round (`triton_rounds`'s docstring derives it):
    P'_ij = w_i P_ij = exp((s_ij - m_i) - (log l_i - log w_i))
    dv_j += P'_ij do_i,  dS_ij = P'_ij (<do_i, v_j> - g_i)  (0 where s_ij was replaced),
    dq_i += scale dS_ij k_j,  dk_j += scale dS_ij q_i.
Every position has one slot a round, so each program stores its chunks' rows without
atomics: into fp32 accumulators at the original positions (written by the first round,
read back by later ones), and by the last round into dx, dv in their dtype and layout.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .triton_chunked import RunConfig, _dot, _flags, _replace_scores
from .triton_rounds import _round_keys, _round_queries, _row_norms, _side, _store_rows, _strides


@triton.jit
def _block_grads(
    q,
    do,
    q_pos,
    q_bkt,
    m_row,
    shift,
    g,
    k,
    v,
    k_pos,
    k_ok,
    k_bkt,
    dv,
    dk,
    scale,
    CAUSAL: tl.constexpr,
    HAS_BUCKETS: tl.constexpr,
    UPCAST: tl.constexpr,
    FP32_ACCURATE: tl.constexpr,
):
    """One (query chunk, key chunk) block: adds its parts into dv and dk (N, D) and returns
    them with its part of dq (M, D); fp32, unscaled by `scale` (dk, dq).

    q, do (M, D) with per-row vectors (M,); k, v (N, D) with per-key vectors (N,).
    """
    s = _dot(q, tl.trans(k), UPCAST, FP32_ACCURATE) * scale  # (M, N)
    s, free = _replace_scores(
        s, q_pos[:, None], k_pos[None, :], k_ok[None, :], q_bkt[:, None], k_bkt[None, :],
        0, CAUSAL, HAS_BUCKETS, False,
    )  # fmt: skip
    p = tl.exp((s - m_row[:, None]) - shift[:, None])  # (M, N) w_i P_ij
    dv += _dot(tl.trans(p).to(do.dtype), do, UPCAST, FP32_ACCURATE)  # (N, D)
    dp = _dot(do, tl.trans(v), UPCAST, FP32_ACCURATE)  # (M, N) <do_i, v_j>
    ds = tl.where(free, p * (dp - g[:, None]), 0.0)  # (M, N)
    dk += _dot(tl.trans(ds).to(q.dtype), q, UPCAST, FP32_ACCURATE)  # (N, D)
    dq = _dot(ds.to(k.dtype), k, UPCAST, FP32_ACCURATE)  # (M, D)
    return dv, dk, dq


@triton.jit
def _round_bwd_kernel(
    X,
    V,
    ORDER,
    VALID,
    BKT,
    DOUT,
    ROWMAX,
    LOGSUM,
    LSE_R,
    LSE_TOT,
    GRAD_DOT,
    DX_ACC,
    DV_ACC,
    DX,
    DV,
    x_sb,
    x_sh,
    x_sl,
    x_sd,
    v_sb,
    v_sh,
    v_sl,
    v_sd,
    do_sb,
    do_sh,
    do_sl,
    do_sd,
    dx_sb,
    dx_sh,
    dx_sl,
    dx_sd,
    dv_sb,
    dv_sh,
    dv_sl,
    dv_sd,
    H,
    R,
    L,
    r,
    scale,
    C: tl.constexpr,
    D: tl.constexpr,
    SPAN: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_VALID: tl.constexpr,
    HAS_BUCKETS: tl.constexpr,
    FIRST: tl.constexpr,
    LAST: tl.constexpr,
    UPCAST: tl.constexpr,
    FP32_ACCURATE: tl.constexpr,
):
    """Round r's dx (queries and keys together) and dv for slot chunks [c0, c0 + SPAN) of
    head (b, h) = divmod(program_id(1), H), c0 = program_id(0) * SPAN, walked downwards."""
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    round_base = (bh * R + r) * L  # (B, H, R, L) tensors: ORDER, BKT, stats
    row_base = bh * L  # (B, H, L) GRAD_DOT
    acc_base = row_base * D  # (B, H, L, D) accumulators
    x_head = X + b * x_sb + h * x_sh
    v_head = V + b * v_sb + h * v_sh
    do_head = DOUT + b * do_sb + h * do_sh
    dx_head = DX + b * dx_sb + h * dx_sh
    valid_row = VALID + b * L  # (B, L)
    offs_c = tl.arange(0, C)
    offs_d = tl.arange(0, D)
    c0 = tl.program_id(0) * SPAN

    # The queries above the run (chunk c0 + SPAN): their look-back at the run's top chunk
    # gives that chunk's dk, dv; their dq belongs to the run above. Chunks past the head's
    # last have rows past L: zero rows and statistics, adding nothing, stored nowhere.
    n_q, n_do, n_pos, n_bkt, n_m, n_shift, n_g = _round_queries(
        x_head, do_head, ORDER, BKT, ROWMAX, LOGSUM, LSE_R, LSE_TOT, GRAD_DOT, round_base,
        row_base, (c0 + SPAN) * C + offs_c, offs_d, x_sl, x_sd, do_sl, do_sd, L, HAS_BUCKETS,
    )  # fmt: skip
    n_dx = tl.zeros([C, D], tl.float32)  # chunk c + 1's dx, all but its look-back part
    for i in range(SPAN):
        c = c0 + SPAN - 1 - i
        q, do, q_pos, q_bkt, m_row, shift, g = _round_queries(
            x_head, do_head, ORDER, BKT, ROWMAX, LOGSUM, LSE_R, LSE_TOT, GRAD_DOT, round_base,
            row_base, c * C + offs_c, offs_d, x_sl, x_sd, do_sl, do_sd, L, HAS_BUCKETS,
        )  # fmt: skip
        rows_in = q_pos >= 0  # (C,)
        # The keys of chunk c: its rows normalised, at the same positions.
        xf = q.to(tl.float32)  # (C, D)
        norm = _row_norms(xf)  # (C,)
        k = (xf / tl.maximum(norm, 1e-6)[:, None]).to(q.dtype)  # (C, D)
        v = tl.load(
            v_head + q_pos[:, None] * v_sl + offs_d[None, :] * v_sd,
            mask=rows_in[:, None], other=0.0,
        )  # fmt: skip
        k_ok = rows_in
        if HAS_VALID:
            k_ok = k_ok & (tl.load(valid_row + q_pos, mask=rows_in, other=0) != 0)
        zeros = tl.zeros([C, D], tl.float32)

        # Block (c+1, c) completes chunk c + 1's dx (inside the run: i > 0).
        dv, dk, dq = _block_grads(
            n_q, n_do, n_pos, n_bkt, n_m, n_shift, n_g, k, v, q_pos, k_ok, q_bkt, zeros,
            zeros, scale, CAUSAL, HAS_BUCKETS, UPCAST, FP32_ACCURATE,
        )  # fmt: skip
        _store_rows(
            DX_ACC, dx_head, acc_base, n_pos, offs_d, (n_pos >= 0) & (i > 0), n_dx + dq * scale,
            dx_sl, dx_sd, D, FIRST, LAST,
        )  # fmt: skip
        # Block (c, c) completes chunk c's dk, dv.
        dv, dk, dq = _block_grads(
            q, do, q_pos, q_bkt, m_row, shift, g, k, v, q_pos, k_ok, q_bkt, dv, dk, scale,
            CAUSAL, HAS_BUCKETS, UPCAST, FP32_ACCURATE,
        )  # fmt: skip
        _store_rows(
            DV_ACC, DV + b * dv_sb + h * dv_sh, acc_base, q_pos, offs_d, rows_in, dv,
            dv_sl, dv_sd, D, FIRST, LAST,
        )  # fmt: skip
        # The keys' gradient through k = x / max(|x|, 1e-6): (dk - k <k, dk>) / |x|.
        dk = dk * scale
        kf = k.to(tl.float32)
        radial = tl.where(norm > 1e-6, tl.sum(kf * dk, 1), 0.0)  # (C,)
        n_dx = dq * scale + (dk - kf * radial[:, None]) / tl.maximum(norm, 1e-6)[:, None]
        n_q, n_do, n_pos, n_bkt, n_m, n_shift, n_g = q, do, q_pos, q_bkt, m_row, shift, g

    # Chunk c0's look-back block (c0, c0-1), for its dq alone (the run below forms its dk, dv).
    k, v, k_pos, k_ok, k_bkt = _round_keys(
        x_head, v_head, ORDER, valid_row, BKT, round_base, c0 * C - C + offs_c, offs_d,
        x_sl, x_sd, v_sl, v_sd, L, HAS_VALID, HAS_BUCKETS, True,
    )  # fmt: skip
    zeros = tl.zeros([C, D], tl.float32)
    _, _, dq = _block_grads(
        n_q, n_do, n_pos, n_bkt, n_m, n_shift, n_g, k, v, k_pos, k_ok, k_bkt, zeros, zeros,
        scale, CAUSAL, HAS_BUCKETS, UPCAST, FP32_ACCURATE,
    )  # fmt: skip
    _store_rows(
        DX_ACC, dx_head, acc_base, n_pos, offs_d, n_pos >= 0, n_dx + dq * scale,
        dx_sl, dx_sd, D, FIRST, LAST,
    )  # fmt: skip


MIN_PROGRAMS = 4096
"""Runs get shorter (down to one chunk) where `span` chunks a run would leave fewer programs
than this: tiny's 8-chunk runs were the fastest at 1M (65K chunks) but 1-chunk runs at 64K
(4K chunks; `experiments/perf/round_backward_sweep.py` on an H100)."""


def run_span(span: int, chunks: int) -> int:
    """Chunks a run: `span`, halved while the launch would have fewer than MIN_PROGRAMS runs
    (`chunks` over all heads)."""
    while span > 1 and chunks // span < MIN_PROGRAMS:
        span //= 2
    return span


def launch_round_backward_fused(
    x: Tensor,
    v: Tensor,
    order: Tensor,
    key_valid: Tensor | None,
    buckets: Tensor | None,
    r: int,
    *,
    chunk_size: int,
    scale: float,
    causal: bool,
    stats: tuple[Tensor, Tensor],
    lse: Tensor,
    lse_total: Tensor,
    grad_dot: Tensor,
    dout: Tensor,
    accumulators: tuple[Tensor, Tensor],
    grads: tuple[Tensor, Tensor] | None,
    config: RunConfig,
    interpret: bool,
) -> None:
    """Round r's dx and dv (keys = the rows of x normalised) added into `accumulators`
    (fp32 (B, H, L, d) contiguous; round 0 writes them); `grads` given (any strides and float
    dtype) makes this the last round: they receive accumulators + this round's part. The
    other inputs as `triton_rounds.launch_round_backward` takes them (checked in rounds.py)."""
    B, H, L, D = x.shape
    R = order.shape[2]
    last = grads is not None
    dx_acc, dv_acc = accumulators
    dx, dv = grads if last else accumulators
    n_chunks = L // chunk_size
    span = run_span(config.span, n_chunks * B * H)
    _round_bwd_kernel[(triton.cdiv(n_chunks, span), B * H)](
        x, v, *_side(order, key_valid, buckets), dout, *stats, lse, lse_total, grad_dot, dx_acc, dv_acc, dx, dv,
        *_strides(x), *_strides(v), *_strides(dout), *_strides(dx), *_strides(dv),
        H, R, L, r, scale,
        C=chunk_size,
        D=D,
        SPAN=span,
        CAUSAL=causal,
        HAS_VALID=key_valid is not None,
        HAS_BUCKETS=buckets is not None,
        FIRST=r == 0,
        LAST=last,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **_flags(x, interpret),
    )  # fmt: skip
