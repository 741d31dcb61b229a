"""Fused LSH hash rounds (Triton): gather, attend, unsort and merge one round in one launch.

A round r of multi-round LSH attention (sec 2, appendix A) sorts each head's positions by
bucket (`order`, (B, H, R, L): slot s holds position order[b, h, r, s]), runs chunked attention
on the sorted rows (`reformer_lab.model.attention.chunked`: slot chunk c sees slot chunks c-1
and c; masks on the positions, i.e. the order values) and merges the round into the output:

    o = sum_r w_r o_r,   w_r = exp(z_r - Z),   Z = logsumexp_r z_r.

These kernels never build sorted copies: a program reads its rows of q, k, v (any strides)
through `order`, and writes everything at the ORIGINAL positions, where each position has
exactly one writer per launch (its slot's program), so read-modify-write needs no atomics.

Forward, per round: o_r, z_r by online softmax (as `triton_chunked._fwd_kernel`), then
    first round:  acc = o_r, top = z_r, mass = 1
    later rounds: t = max(top, z_r); a = mass exp(top - t); b = exp(z_r - t);
                  acc = (acc a + o_r b) / (a + b); top = t; mass = a + b
exactly `merge_rounds`'s recurrence, into fp32 accumulators (B, H, L, d) and (B, H, L); the
last round writes the merged output in the input dtype, with any strides, instead. It also
keeps z_r and its two parts (row max m_r, log row sum log l_r; z_r = m_r + log l_r) per round.

Backward, per round, without o_r. With do the gradient of o, g_i = <do_i, o_i> and P_ij the
round's probabilities, the merge gives d o_r = w_r do and d z_r = w_r (<do, o_r> - g); put
into the flash-attention backward, the <do, o_r> terms cancel:
    dv_j += sum_i w_i P_ij do_i
    dS_ij = w_i P_ij (<do_i, v_j> - g_i)      (0 where s_ij was replaced by a constant)
    dq_i += scale sum_j dS_ij k_j,   dk_j += scale sum_i dS_ij q_i
with w_i P_ij = exp((s_ij - m_i) - (log l_i - log w_i)), log w_i = z_r(i) - Z(i): the row max
is subtracted alone, because an fp32 z_r ~ -1e9 (every key masked) has lost log l_i.
Key tiles (dk, dv: walk the query slots of their chunk and the next) and query tiles (dq: walk
the key slots of their chunk and the one before) are separate launches; fp32 accumulators at
the original positions, written (not added) by the first round, cast into the gradients'
dtype and layout by the last.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_chunked import (
    KernelConfigs,
    TileConfig,
    _dot,
    _flags,
    _needs_visibility,
    _replace_scores,
    _window_steps,
)

# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def _row_norms(x):
    """|x| per row of an fp32 (N, D) tile."""
    return tl.sqrt(tl.sum(x * x, 1))


@triton.jit
def _round_keys(
    K_HEAD,
    V_HEAD,
    ORDER,
    VALID_ROW,
    BKT,
    round_base,
    offs_n,
    offs_d,
    k_sl,
    k_sd,
    v_sl,
    v_sd,
    L,
    HAS_VALID: tl.constexpr,
    HAS_BUCKETS: tl.constexpr,
    NORM_KEYS: tl.constexpr,
):
    """Key slots offs_n of one round, read at their positions; slots outside [0, L) load as
    virtual, masked keys (k = v = 0, position -1), like chunk 0's zero-filled look-back.

    NORM_KEYS: K holds the shared-QK queries and the keys are those rows scaled to unit
    length, x / max(|x|, 1e-6) (sec 2; `chunked.normalize_keys`).
    """
    real = (offs_n >= 0) & (offs_n < L)  # (N,)
    k_pos = tl.load(ORDER + round_base + offs_n, mask=real, other=-1).to(tl.int32)  # (N,)
    k = tl.load(
        K_HEAD + k_pos[:, None] * k_sl + offs_d[None, :] * k_sd, mask=real[:, None], other=0.0
    )  # (N, D)
    v = tl.load(
        V_HEAD + k_pos[:, None] * v_sl + offs_d[None, :] * v_sd, mask=real[:, None], other=0.0
    )  # (N, D)
    if NORM_KEYS:
        kf = k.to(tl.float32)
        k = (kf / tl.maximum(_row_norms(kf), 1e-6)[:, None]).to(K_HEAD.dtype.element_ty)
    k_ok = real
    if HAS_VALID:
        k_ok = k_ok & (tl.load(VALID_ROW + k_pos, mask=real, other=0) != 0)
    k_bkt = k_pos
    if HAS_BUCKETS:
        k_bkt = tl.load(BKT + round_base + k_pos, mask=real, other=-1)
    return k, v, k_pos, k_ok, k_bkt


@triton.jit
def _round_queries(
    Q_HEAD,
    DO_HEAD,
    ORDER,
    BKT,
    ROWMAX,
    LOGSUM,
    LSE_R,
    LSE_TOT,
    GRAD_DOT,
    round_base,
    row_base,
    offs_m,
    offs_d,
    q_sl,
    q_sd,
    do_sl,
    do_sd,
    L,
    HAS_BUCKETS: tl.constexpr,
):
    """Query slots offs_m of one round for the backward: rows q, do and per-row scalars.

    Slots past L load as q = do = 0 with zero statistics: they add exactly nothing.
    Returns q, do, pos, bucket, row max m, shift = log l - log w, and g.
    """
    q_in = offs_m < L  # (M,)
    q_pos = tl.load(ORDER + round_base + offs_m, mask=q_in, other=-2).to(tl.int32)  # (M,)
    q = tl.load(
        Q_HEAD + q_pos[:, None] * q_sl + offs_d[None, :] * q_sd, mask=q_in[:, None], other=0.0
    )  # (M, D)
    do = tl.load(
        DO_HEAD + q_pos[:, None] * do_sl + offs_d[None, :] * do_sd, mask=q_in[:, None], other=0.0
    )  # (M, D)
    m_row = tl.load(ROWMAX + round_base + q_pos, mask=q_in, other=0.0)  # (M,)
    log_l = tl.load(LOGSUM + round_base + q_pos, mask=q_in, other=0.0)
    # (M,) log of the round's weight, log_softmax over rounds of z (formed in torch, exact
    # where z_r - Z in fp32 would not be: Z ~ -1e5 + log R is rounded to ~0.004)
    log_w = tl.load(LSE_TOT + round_base + q_pos, mask=q_in, other=0.0)
    g = tl.load(GRAD_DOT + row_base + q_pos, mask=q_in, other=0.0)  # (M,)
    q_bkt = q_pos
    if HAS_BUCKETS:
        q_bkt = tl.load(BKT + round_base + q_pos, mask=q_in, other=-2)
    return q, do, q_pos, q_bkt, m_row, log_l - log_w, g


@triton.jit
def _store_rows(
    ACC,
    OUT_HEAD,
    acc_base,
    pos,
    offs_d,
    rows_in,
    x,
    o_sl,
    o_sd,
    D: tl.constexpr,
    FIRST: tl.constexpr,
    LAST: tl.constexpr,
):
    """Adds round rows x (M, D) fp32 into the accumulator rows at positions `pos`: written by
    the first round, read back by later ones; the last one writes OUT in its dtype instead."""
    acc_rows = ACC + acc_base + pos[:, None] * D + offs_d[None, :]  # (M, D) fp32 (B, H, L, D)
    if not FIRST:
        x += tl.load(acc_rows, mask=rows_in[:, None], other=0.0)
    if LAST:
        tl.store(
            OUT_HEAD + pos[:, None] * o_sl + offs_d[None, :] * o_sd,
            x.to(OUT_HEAD.dtype.element_ty),
            mask=rows_in[:, None],
        )
    else:
        tl.store(acc_rows, x, mask=rows_in[:, None])


# ----------------------------------------------------------------------------- forward


@triton.jit
def _round_fwd_kernel(
    Q,
    K,
    V,
    ORDER,
    VALID,
    BKT,
    OUT_ACC,
    LSE_ACC,
    LSE_R,
    ROWMAX,
    LOGSUM,
    OUT,
    q_sb,
    q_sh,
    q_sl,
    q_sd,
    k_sb,
    k_sh,
    k_sl,
    k_sd,
    v_sb,
    v_sh,
    v_sl,
    v_sd,
    o_sb,
    o_sh,
    o_sl,
    o_sd,
    H,
    R,
    L,
    r,
    scale,
    C: tl.constexpr,
    D: tl.constexpr,
    TILE: tl.constexpr,
    STEP: tl.constexpr,
    STEPS: tl.constexpr,
    NEED_VIS: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_VALID: tl.constexpr,
    HAS_BUCKETS: tl.constexpr,
    NORM_KEYS: tl.constexpr,
    STATS: tl.constexpr,
    FIRST: tl.constexpr,
    LAST: tl.constexpr,
    UPCAST: tl.constexpr,
    FP32_ACCURATE: tl.constexpr,
):
    """Round r for TILE query slots of head (b, h) = divmod(program_id(1), H)."""
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    round_base = (bh * R + r) * L  # (B, H, R, L) tensors: ORDER, BKT, LSE_R, ROWMAX, LOGSUM
    row_base = bh * L  # (B, H, L) LSE_ACC
    q_head = Q + b * q_sb + h * q_sh
    k_head = K + b * k_sb + h * k_sh
    v_head = V + b * v_sb + h * v_sh
    valid_row = VALID + b * L  # (B, L)

    q_start = tl.program_id(0) * TILE
    offs_m = q_start + tl.arange(0, TILE)  # (M,) query slots
    offs_d = tl.arange(0, D)
    q_in = offs_m < L
    q_pos = tl.load(ORDER + round_base + offs_m, mask=q_in, other=-2)  # (M,) positions
    q = tl.load(
        q_head + q_pos[:, None] * q_sl + offs_d[None, :] * q_sd, mask=q_in[:, None], other=0.0
    )  # (M, D)
    q_bkt = q_pos
    if HAS_BUCKETS:
        q_bkt = tl.load(BKT + round_base + q_pos, mask=q_in, other=-2)
    q_chunk = offs_m // C  # (M,)

    m_i = tl.full([TILE], float("-inf"), tl.float32)  # running max
    l_i = tl.zeros([TILE], tl.float32)  # running sum of exp(s - m_i)
    acc = tl.zeros([TILE, D], tl.float32)  # running sum of exp(s - m_i) v
    k_lo = (q_start // C) * C - C  # first key slot of the window (< 0 for chunk 0: virtual)
    for i in range(STEPS):
        offs_n = k_lo + i * STEP + tl.arange(0, STEP)  # (N,) key slots
        k, v, k_pos, k_ok, k_bkt = _round_keys(
            k_head, v_head, ORDER, valid_row, BKT, round_base, offs_n, offs_d,
            k_sl, k_sd, v_sl, v_sd, L, HAS_VALID, HAS_BUCKETS, NORM_KEYS,
        )  # fmt: skip
        k_chunk = (offs_n + C) // C - 1  # (N,) -1 for the virtual look-back of chunk 0
        visible = (k_chunk[None, :] == q_chunk[:, None]) | (
            k_chunk[None, :] == q_chunk[:, None] - 1
        )
        s = _dot(q, tl.trans(k), UPCAST, FP32_ACCURATE) * scale  # (M, N) fp32
        s, _ = _replace_scores(
            s, q_pos[:, None], k_pos[None, :], k_ok[None, :], q_bkt[:, None], k_bkt[None, :],
            visible, CAUSAL, HAS_BUCKETS, NEED_VIS,
        )  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, 1))  # (M,) -inf while a row has seen no visible key
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # keeps exp(-inf - -inf) out
        alpha = tl.exp(m_i - m_sub)  # (M,)
        p = tl.exp(s - m_sub[:, None])  # (M, N)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(V.dtype.element_ty), v, UPCAST, FP32_ACCURATE)
        m_i = m_new

    o_r = acc / l_i[:, None]  # (M, D) the round's output
    log_l = tl.log(l_i)  # (M,)
    z_r = m_i + log_l  # (M,) the round's log-normaliser
    tl.store(LSE_R + round_base + q_pos, z_r, mask=q_in)
    if STATS:
        tl.store(ROWMAX + round_base + q_pos, m_i, mask=q_in)
        tl.store(LOGSUM + round_base + q_pos, log_l, mask=q_in)

    # Merge into the running (acc, top, mass) at the original positions (appendix A). The
    # running max is kept apart from the running mass: logaddexp of two values near -1e5 (a
    # query that sees only itself) resolves only ~0.008 in fp32 and would skew the weights.
    # LSE_ACC holds the max, then (one B*H*L block later) the mass.
    mass_acc = LSE_ACC + tl.num_programs(1) * L
    top = z_r
    mass = z_r * 0.0 + 1.0
    if not FIRST:
        prev = tl.load(LSE_ACC + row_base + q_pos, mask=q_in, other=0.0)  # (M,)
        prev_mass = tl.load(mass_acc + row_base + q_pos, mask=q_in, other=1.0)  # (M,)
        top = tl.maximum(prev, z_r)
        m_old = prev_mass * tl.exp(prev - top)
        m_new = tl.exp(z_r - top)
        mass = m_old + m_new
        acc_rows = OUT_ACC + row_base * D + q_pos[:, None] * D + offs_d[None, :]
        old = tl.load(acc_rows, mask=q_in[:, None], other=0.0)  # (M, D) fp32
        o_r = (old * m_old[:, None] + o_r * m_new[:, None]) / mass[:, None]
    if not LAST:
        tl.store(LSE_ACC + row_base + q_pos, top, mask=q_in)
        tl.store(mass_acc + row_base + q_pos, mass, mask=q_in)
    _store_rows(
        OUT_ACC, OUT + b * o_sb + h * o_sh, row_base * D, q_pos, offs_d, q_in, o_r,
        o_sl, o_sd, D, True, LAST,
    )  # fmt: skip


# ----------------------------------------------------------------------------- backward


@triton.jit
def _row_dot_kernel(
    A,
    B_,
    DOT,
    a_sb,
    a_sh,
    a_sl,
    a_sd,
    b_sb,
    b_sh,
    b_sl,
    b_sd,
    H,
    L,
    D: tl.constexpr,
    TILE: tl.constexpr,
):
    """DOT[b, h, l] = <A[b, h, l], B[b, h, l]> in fp32: g = <do, o>, (B, H, L) contiguous."""
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * TILE + tl.arange(0, TILE)
    offs_d = tl.arange(0, D)
    rows_in = offs_m < L
    a = tl.load(
        A + b * a_sb + h * a_sh + offs_m[:, None] * a_sl + offs_d[None, :] * a_sd,
        mask=rows_in[:, None],
        other=0.0,
    ).to(tl.float32)
    x = tl.load(
        B_ + b * b_sb + h * b_sh + offs_m[:, None] * b_sl + offs_d[None, :] * b_sd,
        mask=rows_in[:, None],
        other=0.0,
    ).to(tl.float32)
    tl.store(DOT + bh * L + offs_m, tl.sum(a * x, 1), mask=rows_in)


@triton.jit
def _round_dkdv_kernel(
    Q,
    K,
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
    DK_ACC,
    DV_ACC,
    DK,
    DV,
    q_sb,
    q_sh,
    q_sl,
    q_sd,
    k_sb,
    k_sh,
    k_sl,
    k_sd,
    v_sb,
    v_sh,
    v_sl,
    v_sd,
    do_sb,
    do_sh,
    do_sl,
    do_sd,
    dk_sb,
    dk_sh,
    dk_sl,
    dk_sd,
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
    TILE: tl.constexpr,
    STEP: tl.constexpr,
    STEPS: tl.constexpr,
    NEED_VIS: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_VALID: tl.constexpr,
    HAS_BUCKETS: tl.constexpr,
    NORM_KEYS: tl.constexpr,
    FIRST: tl.constexpr,
    LAST: tl.constexpr,
    DK_LAST: tl.constexpr,
    UPCAST: tl.constexpr,
    FP32_ACCURATE: tl.constexpr,
):
    """Round r's dk, dv for TILE key slots; walks the query slots of their chunk and the next.

    Scores are held transposed, (keys N, queries M), so dv and dk are plain products. With
    NORM_KEYS, dk is carried back through the keys' normalisation k = x / |x| to the rows x
    themselves, dx = (dk - k <k, dk>) / |x| (dk / 1e-6 where |x| <= 1e-6), and added into DK_ACC,
    which is then the queries' accumulator: the dq launches add to it (DK_LAST is off).
    """
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    round_base = (bh * R + r) * L
    row_base = bh * L
    q_head = Q + b * q_sb + h * q_sh
    do_head = DOUT + b * do_sb + h * do_sh

    k_start = tl.program_id(0) * TILE
    offs_n = k_start + tl.arange(0, TILE)  # (N,) key slots
    offs_d = tl.arange(0, D)
    k, v, k_pos, k_ok, k_bkt = _round_keys(
        K + b * k_sb + h * k_sh, V + b * v_sb + h * v_sh, ORDER, VALID + b * L, BKT, round_base,
        offs_n, offs_d, k_sl, k_sd, v_sl, v_sd, L, HAS_VALID, HAS_BUCKETS, NORM_KEYS,
    )  # fmt: skip
    k_chunk = offs_n // C  # (N,)
    dk = tl.zeros([TILE, D], tl.float32)
    dv = tl.zeros([TILE, D], tl.float32)

    m_lo = (k_start // C) * C
    for i in range(STEPS):
        offs_m = m_lo + i * STEP + tl.arange(0, STEP)  # (M,) query slots
        q, do, q_pos, q_bkt, m_row, shift, g = _round_queries(
            q_head, do_head, ORDER, BKT, ROWMAX, LOGSUM, LSE_R, LSE_TOT, GRAD_DOT, round_base,
            row_base, offs_m, offs_d, q_sl, q_sd, do_sl, do_sd, L, HAS_BUCKETS,
        )  # fmt: skip
        q_chunk = offs_m // C
        visible = (
            (q_chunk[None, :] == k_chunk[:, None]) | (q_chunk[None, :] == k_chunk[:, None] + 1)
        ) & (offs_m[None, :] < L)
        s_t = _dot(k, tl.trans(q), UPCAST, FP32_ACCURATE) * scale  # (N, M)
        s_t, free_t = _replace_scores(
            s_t, q_pos[None, :], k_pos[:, None], k_ok[:, None], q_bkt[None, :], k_bkt[:, None],
            visible, CAUSAL, HAS_BUCKETS, NEED_VIS,
        )  # fmt: skip
        p_t = tl.exp((s_t - m_row[None, :]) - shift[None, :])  # (N, M) w_i P_ij
        dv += _dot(p_t.to(DOUT.dtype.element_ty), do, UPCAST, FP32_ACCURATE)
        dp_t = _dot(v, tl.trans(do), UPCAST, FP32_ACCURATE)  # (N, M) <do_i, v_j>
        ds_t = tl.where(free_t, p_t * (dp_t - g[None, :]), 0.0)  # (N, M)
        dk += _dot(ds_t.to(Q.dtype.element_ty), q, UPCAST, FP32_ACCURATE)

    k_in = offs_n < L
    acc_base = row_base * D
    dk = dk * scale
    if NORM_KEYS:  # the rows x again, for |x|
        x = tl.load(
            K + b * k_sb + h * k_sh + k_pos[:, None] * k_sl + offs_d[None, :] * k_sd,
            mask=k_in[:, None], other=0.0,
        ).to(tl.float32)  # fmt: skip
        k_norm = _row_norms(x)  # (N,)
        kf = k.to(tl.float32)
        radial = tl.where(k_norm > 1e-6, tl.sum(kf * dk, 1), 0.0)  # (N,) <k, dk>
        dk = (dk - kf * radial[:, None]) / tl.maximum(k_norm, 1e-6)[:, None]
    _store_rows(
        DK_ACC, DK + b * dk_sb + h * dk_sh, acc_base, k_pos, offs_d, k_in, dk,
        dk_sl, dk_sd, D, FIRST, DK_LAST,
    )  # fmt: skip
    _store_rows(
        DV_ACC, DV + b * dv_sb + h * dv_sh, acc_base, k_pos, offs_d, k_in, dv,
        dv_sl, dv_sd, D, FIRST, LAST,
    )  # fmt: skip


@triton.jit
def _round_dq_kernel(
    Q,
    K,
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
    DQ_ACC,
    DQ,
    q_sb,
    q_sh,
    q_sl,
    q_sd,
    k_sb,
    k_sh,
    k_sl,
    k_sd,
    v_sb,
    v_sh,
    v_sl,
    v_sd,
    do_sb,
    do_sh,
    do_sl,
    do_sd,
    dq_sb,
    dq_sh,
    dq_sl,
    dq_sd,
    H,
    R,
    L,
    r,
    scale,
    C: tl.constexpr,
    D: tl.constexpr,
    TILE: tl.constexpr,
    STEP: tl.constexpr,
    STEPS: tl.constexpr,
    NEED_VIS: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_VALID: tl.constexpr,
    HAS_BUCKETS: tl.constexpr,
    NORM_KEYS: tl.constexpr,
    FIRST: tl.constexpr,
    LAST: tl.constexpr,
    UPCAST: tl.constexpr,
    FP32_ACCURATE: tl.constexpr,
):
    """Round r's dq for TILE query slots; walks the key slots of their chunk and the previous."""
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    round_base = (bh * R + r) * L
    row_base = bh * L
    k_head = K + b * k_sb + h * k_sh
    v_head = V + b * v_sb + h * v_sh
    valid_row = VALID + b * L

    q_start = tl.program_id(0) * TILE
    offs_m = q_start + tl.arange(0, TILE)  # (M,) query slots
    offs_d = tl.arange(0, D)
    q, do, q_pos, q_bkt, m_row, shift, g = _round_queries(
        Q + b * q_sb + h * q_sh, DOUT + b * do_sb + h * do_sh, ORDER, BKT, ROWMAX, LOGSUM,
        LSE_R, LSE_TOT, GRAD_DOT, round_base, row_base, offs_m, offs_d, q_sl, q_sd, do_sl,
        do_sd, L, HAS_BUCKETS,
    )  # fmt: skip
    q_chunk = offs_m // C
    dq = tl.zeros([TILE, D], tl.float32)

    k_lo = (q_start // C) * C - C  # chunk 0's virtual look-back: k = 0, masked, adds nothing
    for i in range(STEPS):
        offs_n = k_lo + i * STEP + tl.arange(0, STEP)  # (N,) key slots
        k, v, k_pos, k_ok, k_bkt = _round_keys(
            k_head, v_head, ORDER, valid_row, BKT, round_base, offs_n, offs_d,
            k_sl, k_sd, v_sl, v_sd, L, HAS_VALID, HAS_BUCKETS, NORM_KEYS,
        )  # fmt: skip
        k_chunk = (offs_n + C) // C - 1
        visible = (k_chunk[None, :] == q_chunk[:, None]) | (
            k_chunk[None, :] == q_chunk[:, None] - 1
        )
        s = _dot(q, tl.trans(k), UPCAST, FP32_ACCURATE) * scale  # (M, N)
        s, free = _replace_scores(
            s, q_pos[:, None], k_pos[None, :], k_ok[None, :], q_bkt[:, None], k_bkt[None, :],
            visible, CAUSAL, HAS_BUCKETS, NEED_VIS,
        )  # fmt: skip
        p = tl.exp((s - m_row[:, None]) - shift[:, None])  # (M, N) w_i P_ij
        dp = _dot(do, tl.trans(v), UPCAST, FP32_ACCURATE)  # (M, N)
        ds = tl.where(free, p * (dp - g[:, None]), 0.0)
        dq += _dot(ds.to(K.dtype.element_ty), k, UPCAST, FP32_ACCURATE)

    _store_rows(
        DQ_ACC, DQ + b * dq_sb + h * dq_sh, row_base * D, q_pos, offs_d, offs_m < L,
        dq * scale, dq_sl, dq_sd, D, FIRST, LAST,
    )  # fmt: skip


# ----------------------------------------------------------------------------- launchers


def _strides(x: Tensor) -> tuple[int, int, int, int]:
    return tuple(x.stride())  # type: ignore[return-value]


def _side(order: Tensor, key_valid: Tensor | None, buckets: Tensor | None) -> tuple:
    """Unused optional inputs are passed as `order` (never read: their HAS_ flag is off)."""
    return (order, order if key_valid is None else key_valid, order if buckets is None else buckets)


def launch_round_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    order: Tensor,
    key_valid: Tensor | None,
    buckets: Tensor | None,
    r: int,
    *,
    chunk_size: int,
    scale: float,
    causal: bool,
    out_acc: Tensor,
    lse_acc: Tensor,
    lse: Tensor,
    stats: tuple[Tensor, Tensor] | None,
    out: Tensor | None,
    config: TileConfig,
    interpret: bool,
    norm_keys: bool = False,
) -> None:
    """Round r, checked inputs (rounds.py): q, k, v (B, H, L, d) any strides; order, buckets,
    lse and stats (B, H, R, L) contiguous; key_valid (B, L) uint8; out_acc (B, H, L, d) and
    lse_acc (2, B, H, L) fp32 contiguous (running max, running mass). Round 0 writes the
    accumulators; `out` given makes this the last round: it receives the merged output
    instead of the accumulators. norm_keys: k is q, and the keys are its rows normalised."""
    B, H, L, D = q.shape
    R = order.shape[2]
    last = out is not None
    _round_fwd_kernel[(triton.cdiv(L, config.tile), B * H)](
        q, k, v,
        *_side(order, key_valid, buckets),
        out_acc, lse_acc, lse,
        *(stats or (lse, lse)),
        out if last else out_acc,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out if last else out_acc),
        H, R, L, r, scale,
        C=chunk_size,
        D=D,
        TILE=config.tile,
        STEP=config.step,
        STEPS=_window_steps(chunk_size, config),
        NEED_VIS=_needs_visibility(chunk_size, config),
        CAUSAL=causal,
        HAS_VALID=key_valid is not None,
        HAS_BUCKETS=buckets is not None,
        NORM_KEYS=norm_keys,
        STATS=stats is not None,
        FIRST=r == 0,
        LAST=last,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **_flags(q, interpret),
    )  # fmt: skip


def launch_row_dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> over the last dim in fp32: (B, H, L, d) x2, any strides -> (B, H, L) contiguous."""
    B, H, L, D = a.shape
    dot = torch.empty(B, H, L, device=a.device, dtype=torch.float32)
    _row_dot_kernel[(triton.cdiv(L, 64), B * H)](
        a, b, dot, *_strides(a), *_strides(b), H, L, D=D, TILE=64
    )
    return dot


def launch_round_backward(
    q: Tensor,
    k: Tensor,
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
    accumulators: tuple[Tensor, Tensor, Tensor],
    grads: tuple[Tensor, Tensor, Tensor] | None,
    configs: KernelConfigs,
    interpret: bool,
    parts: tuple[str, ...] = ("dkdv", "dq"),
    norm_keys: bool = False,
) -> None:
    """Round r's dq, dk, dv added into `accumulators` (fp32 (B, H, L, d) contiguous; round 0
    writes them); `grads` given (any strides, any float dtype) makes this the last round:
    they receive accumulators + this round's part. lse_total: the log round weights
    log_softmax_r(z) (B, H, R, L) fp32; grad_dot (B, H, L) fp32
    contiguous; dout (B, H, L, d) any strides. `parts` lets a benchmark time one kernel.

    norm_keys: k is q and the keys are its rows normalised; the keys' gradient is folded
    into the queries' one, so dk's accumulator must be dq's (dk itself is never written):
    round 0's dk/dv launch writes it, the dq launches only add, and the last dq launch
    writes dq. The dk/dv launch of a round must precede its dq launch."""
    B, H, L, D = q.shape
    R = order.shape[2]
    last = grads is not None
    dq_acc, dk_acc, dv_acc = accumulators
    dq, dk, dv = grads if last else accumulators
    inputs = (q, k, v, *_side(order, key_valid, buckets), dout, *stats, lse, lse_total, grad_dot)
    common = dict(
        C=chunk_size,
        D=D,
        CAUSAL=causal,
        HAS_VALID=key_valid is not None,
        HAS_BUCKETS=buckets is not None,
        NORM_KEYS=norm_keys,
        LAST=last,
        **_flags(q, interpret),
    )
    if norm_keys and dk_acc is not dq_acc:
        raise ValueError("with norm_keys, dk's accumulator must be dq's (the fold adds into it)")
    launches = {
        "dkdv": (
            _round_dkdv_kernel, configs.dkdv, (dk_acc, dv_acc, dk, dv), (dk, dv),
            dict(FIRST=r == 0, DK_LAST=last and not norm_keys),
        ),
        "dq": (
            _round_dq_kernel, configs.dq, (dq_acc, dq), (dq,),
            dict(FIRST=r == 0 and not norm_keys),
        ),
    }  # fmt: skip
    for part in parts:
        kernel, cfg, results, strided, flags = launches[part]
        kernel[(triton.cdiv(L, cfg.tile), B * H)](
            *inputs,
            *results,
            *_strides(q), *_strides(k), *_strides(v), *_strides(dout),
            *(s for t in strided for s in _strides(t)),
            H, R, L, r, scale,
            TILE=cfg.tile,
            STEP=cfg.step,
            STEPS=_window_steps(chunk_size, cfg),
            NEED_VIS=_needs_visibility(chunk_size, cfg),
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            **common,
            **flags,
        )  # fmt: skip
