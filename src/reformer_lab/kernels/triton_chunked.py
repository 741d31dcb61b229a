"""Fused Triton kernels for chunked attention (the Reformer's sec 2 inner loop), fwd and bwd.

Computes exactly `reformer_lab.model.attention.chunked` (read its module docstring): query i
of chunk c sees the 2C keys of chunks c-1 and c; scores are replaced by MASK_SCORE / SELF_SCORE
in-kernel; outputs are out (G, L, d) and lse (G, L) fp32 (appendix A merges hash rounds with
it). The (n, C, 2C) score tensor never reaches global memory: FlashAttention-style online
softmax over key blocks, fp32 accumulation, operands of tl.dot in the input dtype.

Tiles. A program owns TILE rows (queries in fwd/dq, keys in dk/dv) and walks the other side
STEP rows at a time. A tile may be shorter than a chunk or span several chunks; when a tile or
a walked block can reach past the two-chunk window, a visibility mask (key chunk == query chunk
or query chunk - 1) removes the extra pairs entirely (score -inf: no weight, no gradient).
Chunk 0's look-back is C virtual keys (k = v = 0, masked, pos = -1), exactly as the reference's
zero-filled `look_back`: they add exp(MASK_SCORE - m) to the normaliser, which matters for rows
whose every key is masked.

Backward, without atomics (deterministic, no fp32 scratch the size of q):
  Delta_i = <dO_i, O_i>                           (_delta_kernel)
  dS_ij = P_ij (dP_ij - Delta_i + dlse_i), zero where s_ij was replaced by a constant,
  dk, dv for a key tile: walk the query rows of its chunk and the next (_dkdv_kernel),
  dq for a query tile: walk the keys of its chunk and the previous one (_dq_kernel).
P and dP are recomputed in both kernels: 7 tile matmuls instead of FlashAttention-2's 5.
The backward forms P_ij = exp((s_ij - m_i) - log l_i) from the forward's row max m_i and log
row sum log l_i, not from lse_i = m_i + log l_i: when m_i is MASK_SCORE or SELF_SCORE, an fp32
lse has lost log l_i to rounding (ulp 64 at 1e9), and exp(s - lse) would be off by up to 2C.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

MASK_SCORE = -1e9  # must equal reformer_lab.model.attention.chunked.MASK_SCORE (tested)
SELF_SCORE = -1e5  # must equal reformer_lab.model.attention.chunked.SELF_SCORE (tested)
_MASK = tl.constexpr(MASK_SCORE)
_SELF = tl.constexpr(SELF_SCORE)


@dataclass(frozen=True)
class TileConfig:
    """One kernel's launch shape: `tile` rows per program, the other side walked `step` at a time."""

    tile: int = 64
    step: int = 64
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class RunConfig:
    """The one-launch round backward's shape (`triton_round_backward`): each program walks
    `span` consecutive slot chunks of one head."""

    span: int = 4
    num_warps: int = 8
    num_stages: int = 2


@dataclass(frozen=True)
class KernelConfigs:
    fwd: TileConfig
    dkdv: TileConfig
    dq: TileConfig
    bwd: RunConfig | None = None
    """Shared-QK rounds only: the backward in one launch a round with this shape, instead of
    the dkdv and dq launches (None: those two)."""


def default_configs(
    chunk_size: int, head_dim: int, dtype: torch.dtype = torch.bfloat16
) -> KernelConfigs:
    """Launch shapes by (C, d, dtype): the largest tiles that compile for sm_90 without register
    spills (checked with cuobjdump); timings on an H100 come from kernel_check.py."""
    C, D = chunk_size, head_dim
    if dtype == torch.float32:  # tf32x3 products: three MMAs per dot, operands split in registers
        if D <= 32:
            cfg = TileConfig(tile=32, step=16, num_warps=4)
        elif D <= 64:
            cfg = TileConfig(tile=32, step=min(C, 32), num_warps=8)
        else:
            cfg = TileConfig(tile=16, step=16, num_warps=8)
        return KernelConfigs(fwd=cfg, dkdv=cfg, dq=cfg)
    if D <= 16 and C <= 16:  # tuned on an H100 (kernel_check.py, tiny: C = d = 16)
        return KernelConfigs(
            fwd=TileConfig(tile=32, step=16, num_warps=2),
            dkdv=TileConfig(tile=32, step=32, num_warps=2),
            dq=TileConfig(tile=32, step=16, num_warps=2),
        )
    if D <= 32:
        cfg = TileConfig(tile=64, step=min(C, 32), num_warps=4)
        return KernelConfigs(fwd=cfg, dkdv=cfg, dq=cfg)
    if D <= 64:  # tuned on an H100 for C = d = 64 (kernel_check.py, base)
        return KernelConfigs(
            fwd=TileConfig(tile=64, step=min(C, 64), num_warps=4),
            dkdv=TileConfig(tile=64, step=min(C, 64), num_warps=4),
            dq=TileConfig(tile=64, step=min(C, 32), num_warps=4),
        )
    return KernelConfigs(
        fwd=TileConfig(tile=64, step=min(C, 64), num_warps=8),
        dkdv=TileConfig(tile=32, step=min(C, 32), num_warps=8),
        dq=TileConfig(tile=64, step=min(C, 32), num_warps=8),
    )


# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, FP32_ACCURATE: tl.constexpr):
    """a @ b with fp32 accumulation. UPCAST: interpreter only (it cannot multiply bf16)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if FP32_ACCURATE:  # noqa: SIM108  (an if-block: plain constexpr branching for the compiler)
        ab = tl.dot(a, b, input_precision="tf32x3")
    else:
        ab = tl.dot(a, b)
    return ab


@triton.jit
def _replace_scores(
    s,
    q_pos,
    k_pos,
    k_ok,
    q_bkt,
    k_bkt,
    visible,
    CAUSAL: tl.constexpr,
    HAS_BUCKETS: tl.constexpr,
    NEED_VIS: tl.constexpr,
):
    """The docstring's replacement rules on a score block; arguments broadcast against s.

    Returns (scores, free): free marks entries that kept scale * <q, k> (they get gradient).
    """
    masked = ~k_ok
    if CAUSAL:
        masked = masked | (k_pos > q_pos)
    if HAS_BUCKETS:
        masked = masked | (k_bkt != q_bkt)
    is_self = k_pos == q_pos
    s = tl.where(is_self, _SELF, s)
    s = tl.where(masked, _MASK, s)
    free = ~(masked | is_self)
    if NEED_VIS:
        s = tl.where(visible, s, float("-inf"))
        free = free & visible
    return s, free


@triton.jit
def _load_keys(
    K,
    V,
    POS,
    VALID,
    BKT,
    kv_base,
    row_base,
    offs_n,
    offs_d,
    L,
    D: tl.constexpr,
    HAS_VALID: tl.constexpr,
    HAS_BUCKETS: tl.constexpr,
):
    """Key rows offs_n (may fall outside [0, L): those load as virtual, masked keys)."""
    real = (offs_n >= 0) & (offs_n < L)  # (N,)
    rows = kv_base + offs_n[:, None] * D + offs_d[None, :]  # (N, D)
    k = tl.load(K + rows, mask=real[:, None], other=0.0)  # (N, D)
    v = tl.load(V + rows, mask=real[:, None], other=0.0)  # (N, D)
    k_pos = tl.load(POS + row_base + offs_n, mask=real, other=-1)  # (N,)
    k_ok = real
    if HAS_VALID:
        k_ok = k_ok & (tl.load(VALID + row_base + offs_n, mask=real, other=0) != 0)
    k_bkt = k_pos
    if HAS_BUCKETS:
        k_bkt = tl.load(BKT + row_base + offs_n, mask=real, other=-1)
    return k, v, k_pos, k_ok, k_bkt


# ----------------------------------------------------------------------------- forward


@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    POS,
    VALID,
    BKT,
    OUT,
    LSE,
    ROWMAX,
    LOGSUM,
    L,
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
    STATS: tl.constexpr,
    UPCAST: tl.constexpr,
    FP32_ACCURATE: tl.constexpr,
):
    g = tl.program_id(1).to(tl.int64)
    row_base = g * L  # (G, L) tensors
    kv_base = row_base * D  # (G, L, D) tensors
    q_start = tl.program_id(0) * TILE
    offs_m = q_start + tl.arange(0, TILE)  # (M,) query rows
    offs_d = tl.arange(0, D)
    q_in = offs_m < L
    q = tl.load(Q + kv_base + offs_m[:, None] * D + offs_d[None, :], mask=q_in[:, None], other=0.0)
    q_pos = tl.load(POS + row_base + offs_m, mask=q_in, other=-2)  # (M,)
    q_bkt = q_pos
    if HAS_BUCKETS:
        q_bkt = tl.load(BKT + row_base + offs_m, mask=q_in, other=-2)
    q_chunk = offs_m // C  # (M,)

    m_i = tl.full([TILE], float("-inf"), tl.float32)  # running max
    l_i = tl.zeros([TILE], tl.float32)  # running sum of exp(s - m_i)
    acc = tl.zeros([TILE, D], tl.float32)  # running sum of exp(s - m_i) v
    k_lo = (q_start // C) * C - C  # first key of the window (< 0 for chunk 0: virtual keys)
    for i in range(STEPS):
        offs_n = k_lo + i * STEP + tl.arange(0, STEP)  # (N,) key rows
        k, v, k_pos, k_ok, k_bkt = _load_keys(
            K, V, POS, VALID, BKT, kv_base, row_base, offs_n, offs_d, L, D, HAS_VALID, HAS_BUCKETS
        )
        k_chunk = (offs_n + C) // C - 1  # (N,) -1 for the virtual look-back of chunk 0
        visible = (k_chunk[None, :] == q_chunk[:, None]) | (
            k_chunk[None, :] == q_chunk[:, None] - 1
        )
        s = _dot(q, tl.trans(k), UPCAST, FP32_ACCURATE) * scale  # (M, N) fp32
        s, _ = _replace_scores(
            s,
            q_pos[:, None],
            k_pos[None, :],
            k_ok[None, :],
            q_bkt[:, None],
            k_bkt[None, :],
            visible,
            CAUSAL,
            HAS_BUCKETS,
            NEED_VIS,
        )
        m_new = tl.maximum(m_i, tl.max(s, 1))  # (M,) -inf while a row has seen no visible key
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # keeps exp(-inf - -inf) out
        alpha = tl.exp(m_i - m_sub)  # (M,)
        p = tl.exp(s - m_sub[:, None])  # (M, N)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(V.dtype.element_ty), v, UPCAST, FP32_ACCURATE)
        m_i = m_new

    out = acc / l_i[:, None]  # (M, D)
    tl.store(
        OUT + kv_base + offs_m[:, None] * D + offs_d[None, :],
        out.to(OUT.dtype.element_ty),
        mask=q_in[:, None],
    )
    log_l = tl.log(l_i)  # (M,) in [0, log 2C] for rows with one visible key or more
    tl.store(LSE + row_base + offs_m, m_i + log_l, mask=q_in)
    if STATS:  # lse split in two for the backward: m + log_l rounds away log_l when |m| ~ 1e9
        tl.store(ROWMAX + row_base + offs_m, m_i, mask=q_in)
        tl.store(LOGSUM + row_base + offs_m, log_l, mask=q_in)


# ----------------------------------------------------------------------------- backward


@triton.jit
def _delta_kernel(OUT, DOUT, DELTA, L, D: tl.constexpr, TILE: tl.constexpr):
    """Delta_i = <dO_i, O_i> in fp32, (G, L)."""
    g = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * TILE + tl.arange(0, TILE)
    offs_d = tl.arange(0, D)
    rows = g * L * D + offs_m[:, None] * D + offs_d[None, :]
    q_in = offs_m < L
    o = tl.load(OUT + rows, mask=q_in[:, None], other=0.0).to(tl.float32)
    do = tl.load(DOUT + rows, mask=q_in[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + g * L + offs_m, tl.sum(o * do, 1), mask=q_in)


@triton.jit
def _dkdv_kernel(
    Q,
    K,
    V,
    POS,
    VALID,
    BKT,
    DOUT,
    ROWMAX,
    LOGSUM,
    DELTA,
    DLSE,
    DK,
    DV,
    L,
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
    HAS_DLSE: tl.constexpr,
    UPCAST: tl.constexpr,
    FP32_ACCURATE: tl.constexpr,
):
    """dk, dv for a tile of TILE keys; walks the queries of its chunk(s) and the next chunk.

    Scores are held transposed, (keys N, queries M), so dv and dk are plain products.
    """
    g = tl.program_id(1).to(tl.int64)
    row_base = g * L
    kv_base = row_base * D
    k_start = tl.program_id(0) * TILE
    offs_n = k_start + tl.arange(0, TILE)  # (N,) key rows, all in [0, L) but the tile's tail
    offs_d = tl.arange(0, D)
    k, v, k_pos, k_ok, k_bkt = _load_keys(
        K, V, POS, VALID, BKT, kv_base, row_base, offs_n, offs_d, L, D, HAS_VALID, HAS_BUCKETS
    )
    k_chunk = offs_n // C  # (N,)
    dk = tl.zeros([TILE, D], tl.float32)
    dv = tl.zeros([TILE, D], tl.float32)

    # Query rows past L (the last chunk has no next) load as q = dO = 0: they add exactly 0.
    m_lo = (k_start // C) * C
    for i in range(STEPS):
        offs_m = m_lo + i * STEP + tl.arange(0, STEP)  # (M,) query rows
        q_in = offs_m < L
        rows = kv_base + offs_m[:, None] * D + offs_d[None, :]  # (M, D)
        q = tl.load(Q + rows, mask=q_in[:, None], other=0.0)  # (M, D)
        do = tl.load(DOUT + rows, mask=q_in[:, None], other=0.0)  # (M, D)
        q_pos = tl.load(POS + row_base + offs_m, mask=q_in, other=-2)
        m_row = tl.load(ROWMAX + row_base + offs_m, mask=q_in, other=0.0)
        log_l = tl.load(LOGSUM + row_base + offs_m, mask=q_in, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=q_in, other=0.0)
        if HAS_DLSE:
            delta = delta - tl.load(DLSE + row_base + offs_m, mask=q_in, other=0.0)
        q_bkt = q_pos
        if HAS_BUCKETS:
            q_bkt = tl.load(BKT + row_base + offs_m, mask=q_in, other=-2)
        q_chunk = offs_m // C
        visible = (
            (q_chunk[None, :] == k_chunk[:, None]) | (q_chunk[None, :] == k_chunk[:, None] + 1)
        ) & (q_in[None, :])
        s_t = _dot(k, tl.trans(q), UPCAST, FP32_ACCURATE) * scale  # (N, M)
        s_t, free_t = _replace_scores(
            s_t,
            q_pos[None, :],
            k_pos[:, None],
            k_ok[:, None],
            q_bkt[None, :],
            k_bkt[:, None],
            visible,
            CAUSAL,
            HAS_BUCKETS,
            NEED_VIS,
        )
        p_t = tl.exp((s_t - m_row[None, :]) - log_l[None, :])  # (N, M)
        dv += _dot(p_t.to(DOUT.dtype.element_ty), do, UPCAST, FP32_ACCURATE)
        dp_t = _dot(v, tl.trans(do), UPCAST, FP32_ACCURATE)  # (N, M)
        ds_t = tl.where(free_t, p_t * (dp_t - delta[None, :]), 0.0)  # (N, M)
        dk += _dot(ds_t.to(Q.dtype.element_ty), q, UPCAST, FP32_ACCURATE)

    k_in = offs_n < L
    rows = kv_base + offs_n[:, None] * D + offs_d[None, :]
    tl.store(DK + rows, (dk * scale).to(DK.dtype.element_ty), mask=k_in[:, None])
    tl.store(DV + rows, dv.to(DV.dtype.element_ty), mask=k_in[:, None])


@triton.jit
def _dq_kernel(
    Q,
    K,
    V,
    POS,
    VALID,
    BKT,
    DOUT,
    ROWMAX,
    LOGSUM,
    DELTA,
    DLSE,
    DQ,
    L,
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
    HAS_DLSE: tl.constexpr,
    UPCAST: tl.constexpr,
    FP32_ACCURATE: tl.constexpr,
):
    """dq for a tile of TILE queries; walks the keys of its chunk(s) and the previous chunk."""
    g = tl.program_id(1).to(tl.int64)
    row_base = g * L
    kv_base = row_base * D
    q_start = tl.program_id(0) * TILE
    offs_m = q_start + tl.arange(0, TILE)
    offs_d = tl.arange(0, D)
    q_in = offs_m < L
    rows = kv_base + offs_m[:, None] * D + offs_d[None, :]  # (M, D)
    q = tl.load(Q + rows, mask=q_in[:, None], other=0.0)
    do = tl.load(DOUT + rows, mask=q_in[:, None], other=0.0)
    q_pos = tl.load(POS + row_base + offs_m, mask=q_in, other=-2)
    m_row = tl.load(ROWMAX + row_base + offs_m, mask=q_in, other=0.0)
    log_l = tl.load(LOGSUM + row_base + offs_m, mask=q_in, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=q_in, other=0.0)
    if HAS_DLSE:
        delta = delta - tl.load(DLSE + row_base + offs_m, mask=q_in, other=0.0)
    q_bkt = q_pos
    if HAS_BUCKETS:
        q_bkt = tl.load(BKT + row_base + offs_m, mask=q_in, other=-2)
    q_chunk = offs_m // C
    dq = tl.zeros([TILE, D], tl.float32)

    # Chunk 0's virtual look-back keys (rows < 0) load as k = 0 and masked: they add nothing.
    k_lo = (q_start // C) * C - C
    for i in range(STEPS):
        offs_n = k_lo + i * STEP + tl.arange(0, STEP)  # (N,) key rows
        k, v, k_pos, k_ok, k_bkt = _load_keys(
            K, V, POS, VALID, BKT, kv_base, row_base, offs_n, offs_d, L, D, HAS_VALID, HAS_BUCKETS
        )
        k_chunk = (offs_n + C) // C - 1  # (N,) -1 for the virtual look-back of chunk 0
        visible = (k_chunk[None, :] == q_chunk[:, None]) | (
            k_chunk[None, :] == q_chunk[:, None] - 1
        )
        s = _dot(q, tl.trans(k), UPCAST, FP32_ACCURATE) * scale  # (M, N)
        s, free = _replace_scores(
            s,
            q_pos[:, None],
            k_pos[None, :],
            k_ok[None, :],
            q_bkt[:, None],
            k_bkt[None, :],
            visible,
            CAUSAL,
            HAS_BUCKETS,
            NEED_VIS,
        )
        p = tl.exp((s - m_row[:, None]) - log_l[:, None])  # (M, N)
        dp = _dot(do, tl.trans(v), UPCAST, FP32_ACCURATE)  # (M, N)
        ds = tl.where(free, p * (dp - delta[:, None]), 0.0)
        dq += _dot(ds.to(K.dtype.element_ty), k, UPCAST, FP32_ACCURATE)

    tl.store(DQ + rows, (dq * scale).to(DQ.dtype.element_ty), mask=q_in[:, None])


# ----------------------------------------------------------------------------- launchers


def _flags(q: Tensor, interpret: bool) -> dict:
    """UPCAST: the interpreter multiplies bf16 bit patterns in tl.dot (triton#11584), so it
    gets fp32 operands (exact products of bf16 values: the same sums the GPU forms).
    FP32_ACCURATE: fp32 inputs get fp32-accurate products (tf32x3: three tf32 MMAs) instead of tf32."""
    return dict(
        UPCAST=interpret and q.dtype == torch.bfloat16,
        FP32_ACCURATE=q.dtype == torch.float32,
    )


def _window_steps(chunk_size: int, config: TileConfig) -> int:
    """Blocks of `step` covering the rows a tile touches: its own chunk(s) and one more."""
    return triton.cdiv(max(config.tile, chunk_size) + chunk_size, config.step)


def _needs_visibility(chunk_size: int, config: TileConfig) -> bool:
    """A tile or a walked block longer than a chunk reaches pairs outside the two-chunk window."""
    return config.tile > chunk_size or config.step > chunk_size


def _side_inputs(pos: Tensor, key_valid: Tensor | None, buckets: Tensor | None) -> tuple:
    """Unused optional inputs are passed as `pos` (never read: their HAS_ flag is off)."""
    return (pos, pos if key_valid is None else key_valid, pos if buckets is None else buckets)


def launch_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pos: Tensor,
    key_valid: Tensor | None,
    buckets: Tensor | None,
    *,
    chunk_size: int,
    scale: float,
    causal: bool,
    config: TileConfig,
    interpret: bool,
    stats: bool,
    out: Tensor | None = None,
    lse: Tensor | None = None,
    row_stats: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """Checked contiguous inputs (api.py) -> out (G, L, d) in v.dtype, lse (G, L) fp32 and,
    if `stats`, the backward's (row max, log row sum), each (G, L) fp32, with lse = max + log sum.
    `out`, `lse` and `row_stats` may be given (tests poison them to find unwritten elements)."""
    G, L, D = q.shape
    out = torch.empty_like(v) if out is None else out
    lse = torch.empty(G, L, device=q.device, dtype=torch.float32) if lse is None else lse
    if stats and row_stats is None:
        row_stats = (torch.empty_like(lse), torch.empty_like(lse))
    row_stats = row_stats if stats else None
    _fwd_kernel[(triton.cdiv(L, config.tile), G)](
        q,
        k,
        v,
        *_side_inputs(pos, key_valid, buckets),
        out,
        lse,
        *(row_stats or (lse, lse)),
        L,
        scale,
        C=chunk_size,
        D=D,
        TILE=config.tile,
        STEP=config.step,
        STEPS=_window_steps(chunk_size, config),
        NEED_VIS=_needs_visibility(chunk_size, config),
        CAUSAL=causal,
        HAS_VALID=key_valid is not None,
        HAS_BUCKETS=buckets is not None,
        STATS=stats,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **_flags(q, interpret),
    )
    return out, lse, row_stats


def launch_delta(out: Tensor, dout: Tensor) -> Tensor:
    """Delta (G, L) fp32: rowwise <dO, O>."""
    G, L, D = out.shape
    delta = torch.empty(G, L, device=out.device, dtype=torch.float32)
    _delta_kernel[(triton.cdiv(L, 64), G)](out, dout, delta, L, D=D, TILE=64)
    return delta


def launch_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pos: Tensor,
    key_valid: Tensor | None,
    buckets: Tensor | None,
    out: Tensor,
    row_stats: tuple[Tensor, Tensor],
    dout: Tensor,
    dlse: Tensor | None,
    *,
    chunk_size: int,
    scale: float,
    causal: bool,
    configs: KernelConfigs,
    interpret: bool,
    grads: tuple[Tensor, Tensor, Tensor] | None = None,
    delta: Tensor | None = None,
    parts: tuple[str, ...] = ("dkdv", "dq"),
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of sum(out * dout) + sum(lse * dlse); dout (G, L, d) and dlse (G, L) fp32
    contiguous. `grads` may be given (tests poison them); `delta` and `parts` let a benchmark
    time one kernel alone."""
    G, L, D = q.shape
    if grads is None:
        grads = (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))
    dq, dk, dv = grads
    delta = launch_delta(out, dout) if delta is None else delta
    common = dict(
        C=chunk_size,
        D=D,
        CAUSAL=causal,
        HAS_VALID=key_valid is not None,
        HAS_BUCKETS=buckets is not None,
        HAS_DLSE=dlse is not None,
        **_flags(q, interpret),
    )
    inputs = (q, k, v, *_side_inputs(pos, key_valid, buckets), dout, *row_stats, delta)
    inputs = (*inputs, delta if dlse is None else dlse)
    launches = {
        "dkdv": (_dkdv_kernel, configs.dkdv, (dk, dv)),
        "dq": (_dq_kernel, configs.dq, (dq,)),
    }
    for part in parts:
        kernel, cfg, results = launches[part]
        kernel[(triton.cdiv(L, cfg.tile), G)](
            *inputs,
            *results,
            L,
            scale,
            TILE=cfg.tile,
            STEP=cfg.step,
            STEPS=_window_steps(chunk_size, cfg),
            NEED_VIS=_needs_visibility(chunk_size, cfg),
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            **common,
        )
    return dq, dk, dv
