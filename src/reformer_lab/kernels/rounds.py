"""All hash rounds of LSH attention through the fused round kernels (`triton_rounds`).

    out, lse, stats = lsh_rounds_forward(q, k, v, order, ...)           # R launches
    dq, dk, dv = lsh_rounds_backward(q, k, v, order, ..., out, lse, stats, dout)  # 2R + 1

With k = None the keys are the shared-QK ones, q normalised (sec 2), formed inside the kernels
from the rows of q: no key tensor exists, and the keys' gradient is carried back through the
normalisation into dq inside the kernels too (the backward then returns dk = None).

The functions compute what `reformer_lab.model.attention.lsh_rounds` computes round by round
with sorted copies (`merge_rounds`, and the autograd of `attend_round` for the backward), for
the case without appendix A's duplicate correction. They are plain functions, not autograd:
`lsh_rounds._RoundsFunction` wires them in. Importing this module needs neither triton nor
CUDA; inputs the kernels cannot take raise ValueError before any work (`check_rounds_inputs`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..strided import no_self_overlap
from .api import (
    SUPPORTED_CHUNK_SIZES,
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    interpreting,
)


def check_rounds_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    order: Tensor,
    chunk_size: int,
    key_valid: Tensor | None = None,
    buckets: Tensor | None = None,
) -> None:
    """Raises ValueError, saying what to change, for inputs the fused round kernels do not take.

    q, k, v: (B, H, L, d), one dtype in SUPPORTED_DTYPES, any strides; order: (B, H, R, L)
    integer permutations; key_valid: (B, L) bool; buckets: (B, H, R, L) integer, at the
    original positions. CUDA tensors, or CPU ones under TRITON_INTERPRET=1.
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must all be (B, H, L, d); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"q, k, v must share one dtype among {SUPPORTED_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    B, H, L, d = q.shape
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"head dim {d} is not supported by the fused round kernels; use one of {SUPPORTED_HEAD_DIMS}"
        )
    if chunk_size not in SUPPORTED_CHUNK_SIZES:
        raise ValueError(
            f"chunk_size {chunk_size} is not supported by the fused round kernels; "
            f"use one of {SUPPORTED_CHUNK_SIZES}"
        )
    if L == 0 or L % chunk_size:
        raise ValueError(
            f"sequence length {L} must be a positive multiple of chunk_size {chunk_size}"
        )
    if B * H > 65535:
        raise ValueError(f"B * H = {B * H} exceed the CUDA grid's 65535 on axis 1; split the batch")
    if order.dim() != 4 or order.shape[:2] != (B, H) or order.shape[3] != L or order.shape[2] < 1:
        raise ValueError(
            f"order must be (B, H, R, L) = ({B}, {H}, R, {L}); got {tuple(order.shape)}"
        )
    if order.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"order must be int32 or int64; got {order.dtype}")
    if buckets is not None and (
        buckets.shape != order.shape or buckets.dtype not in (torch.int32, torch.int64)
    ):
        raise ValueError(
            f"buckets must be an int32/int64 tensor of shape {tuple(order.shape)}; "
            f"got {buckets.dtype} {tuple(buckets.shape)}"
        )
    if key_valid is not None and (key_valid.shape != (B, L) or key_valid.dtype != torch.bool):
        raise ValueError(
            f"key_valid must be a bool tensor of shape {(B, L)}; got {key_valid.dtype} {tuple(key_valid.shape)}"
        )
    if max(_batch_extent(x) for x in (q, k, v)) >= 2**31:
        raise ValueError("one batch element of q, k or v must span fewer than 2**31 elements")
    devices = {t.device for t in (q, k, v, order, key_valid, buckets) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device; got {sorted(map(str, devices))}")
    if not q.is_cuda and not interpreting():
        raise ValueError(
            "the fused round kernels need CUDA tensors (or TRITON_INTERPRET=1 on the CPU)"
        )


def check_output_buffer(out: Tensor, v: Tensor) -> None:
    """Raises ValueError unless `out` can take the output for values v: same shape, dtype
    and device, no element stored twice, within the kernels' int32 offsets."""
    if out.shape != v.shape or out.dtype != v.dtype or out.device != v.device:
        raise ValueError(
            f"out must be {v.dtype} {tuple(v.shape)} on {v.device}; "
            f"got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
    if _batch_extent(out) >= 2**31:
        raise ValueError("one batch element of out must span fewer than 2**31 elements")
    if not no_self_overlap(out):
        raise ValueError("out must not store an element twice (an expanded tensor)")


def _batch_extent(x: Tensor) -> int:
    """Elements spanned by one batch element of a strided (B, H, L, d) tensor (int32 offsets)."""
    return 1 + sum((n - 1) * abs(s) for n, s in zip(x.shape[1:], x.stride()[1:]))


def _side_inputs(key_valid: Tensor | None, buckets: Tensor | None) -> tuple:
    return (
        None if key_valid is None else key_valid.contiguous().view(torch.uint8),  # (B, L)
        None if buckets is None else buckets.contiguous(),  # (B, H, R, L)
    )


def default_round_configs(chunk_size: int, head_dim: int, dtype: torch.dtype):
    """Launch shapes of the round kernels: those of the chunked kernel (same loops and tiles),
    but for d = 64 in 16 bits (base: C = d = 64) dk/dv and the forward walk 32 slots at a time.
    dk/dv: the per-row addresses of gathered rows cost registers, and 64 slots spill for sm_90
    (checked with `resources`). The forward: 214 us a launch in base @ 64K's step on an H200
    against 229 at 64 slots (`kernel_check.py --tune-only`: 0.286 against 0.334 ms a round).
    dq stays at 32: 64 was faster alone over all 8 heads (0.340 against 0.369 ms) but slower
    in the step, where it runs one head a launch (42 us, against 38 in session 4's trace).

    `bwd`, the one-launch backward of shared-QK rounds, where its shape was timed
    (ONE_LAUNCH_BACKWARD); elsewhere the dk/dv and dq launches."""
    from .triton_chunked import KernelConfigs, RunConfig, TileConfig, default_configs

    configs = default_configs(chunk_size, head_dim, dtype)
    shape = None if dtype == torch.float32 else ONE_LAUNCH_BACKWARD.get((chunk_size, head_dim))
    bwd = None if shape is None else RunConfig(*shape)
    if dtype == torch.float32 or head_dim != 64 or chunk_size < 64:
        return KernelConfigs(configs.fwd, configs.dkdv, configs.dq, bwd)
    fwd, dkdv, dq = configs.fwd, configs.dkdv, configs.dq
    return KernelConfigs(
        fwd=TileConfig(tile=fwd.tile, step=32, num_warps=fwd.num_warps),
        dkdv=TileConfig(tile=dkdv.tile, step=32, num_warps=dkdv.num_warps),
        dq=dq,
        bwd=bwd,
    )


ONE_LAUNCH_BACKWARD = {(64, 64): (1, 4, 2), (16, 16): (8, 2, 2)}
"""(C, d) -> (span, num_warps, num_stages) of the one-launch round backward
(`triton_round_backward`) for 16-bit q and v: the fastest of a sweep on an H100 (one head,
4 rounds; `experiments/perf/round_backward_sweep.py`). base (C = d = 64): 0.331 ms at 64K
and 1.212 ms at 256K against 0.476 and 1.797 for the dk/dv and dq launches; tiny (16):
1.61 ms at 1M against 2.31 (0.105 against 0.143 at 64K)."""


def lsh_rounds_forward(
    q: Tensor,
    k: Tensor | None,
    v: Tensor,
    order: Tensor,
    chunk_size: int,
    *,
    scale: float,
    causal: bool,
    key_valid: Tensor | None = None,
    buckets: Tensor | None = None,
    stats: bool = False,
    configs=None,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """Multi-round LSH attention, merged: out (B, H, L, d) in v's dtype and layout, every
    round's log-normaliser lse (B, H, R, L) fp32 at the original positions and, if `stats`,
    the backward's (row max, log row sum) per round, each (B, H, R, L) fp32 (lse = max + log sum).
    k = None: the keys are q normalised (shared QK).
    out: a (B, H, L, d) tensor of v's dtype, any strides, to write the output into (a head
    group's columns of a wider (B, L, heads*d) tensor, say) instead of a new one.
    """
    norm_keys, k = k is None, q if k is None else k
    check_rounds_inputs(q, k, v, order, chunk_size, key_valid, buckets)
    if out is not None:
        check_output_buffer(out, v)
    from .triton_rounds import launch_round_forward

    B, H, L, d = q.shape
    R = order.shape[2]
    configs = configs or default_round_configs(chunk_size, d, q.dtype)
    order = order.contiguous()
    key_valid, buckets = _side_inputs(key_valid, buckets)
    f32 = dict(device=q.device, dtype=torch.float32)
    lse = torch.empty(B, H, R, L, **f32)
    row_stats = (torch.empty_like(lse), torch.empty_like(lse)) if stats else None
    if out is None:
        out = empty_heads(v)  # v's layout: (B, L, H, d) memory stays so, a free head merge
    out_acc = torch.empty(B, H, L, d, **f32) if R > 1 else out
    lse_acc = torch.empty(2, B, H, L, **f32) if R > 1 else lse  # running max, then mass
    for r in range(R):
        launch_round_forward(
            q, k, v, order, key_valid, buckets, r,
            chunk_size=chunk_size, scale=float(scale), causal=bool(causal),
            out_acc=out_acc, lse_acc=lse_acc, lse=lse, stats=row_stats,
            out=out if r == R - 1 else None, config=configs.fwd, interpret=interpreting(),
            norm_keys=norm_keys,
        )  # fmt: skip
    return out, lse, row_stats


def lsh_rounds_backward(
    q: Tensor,
    k: Tensor | None,
    v: Tensor,
    order: Tensor,
    chunk_size: int,
    *,
    scale: float,
    causal: bool,
    out: Tensor,
    lse: Tensor,
    stats: tuple[Tensor, Tensor],
    dout: Tensor,
    key_valid: Tensor | None = None,
    buckets: Tensor | None = None,
    configs=None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Gradients of sum(out * dout) w.r.t. q, k, v, in their dtypes and layouts; with k = None
    (keys = q normalised) dq includes the keys' part and dk is None.

    out (B, H, L, d), lse and stats: what `lsh_rounds_forward` returned (stats=True); dout
    (B, H, L, d) any strides. Z = logsumexp_r lse and g = <dout, out> are formed once, as
    `lsh_rounds._RoundsFunction.backward` forms them; then a dk/dv launch per round, then a dq
    launch per round.
    """
    norm_keys, k = k is None, q if k is None else k
    check_rounds_inputs(q, k, v, order, chunk_size, key_valid, buckets)
    if out.shape != q.shape or dout.shape != q.shape:
        raise ValueError(
            f"out and dout must be {tuple(q.shape)}; got {tuple(out.shape)}, {tuple(dout.shape)}"
        )
    if max(_batch_extent(x) for x in (out, dout)) >= 2**31:
        raise ValueError("one batch element of out or dout must span fewer than 2**31 elements")
    if lse.shape != order.shape or any(s.shape != order.shape for s in stats):
        raise ValueError(f"lse and stats must be {tuple(order.shape)} (from lsh_rounds_forward)")
    from .triton_rounds import launch_row_dot

    d = q.shape[-1]
    R = order.shape[2]
    configs = configs or default_round_configs(chunk_size, d, q.dtype)
    order = order.contiguous()
    key_valid, buckets = _side_inputs(key_valid, buckets)
    lse, stats = lse.contiguous(), tuple(s.contiguous() for s in stats)
    if dout.dtype != out.dtype:
        dout = dout.to(out.dtype)
    lse_total = torch.log_softmax(lse, dim=2)  # (B, H, R, L) log round weights, as the torch path
    grad_dot = launch_row_dot(dout, out)  # (B, H, L) g = <dout, out>
    run = dict(
        chunk_size=chunk_size, scale=float(scale), causal=bool(causal), configs=configs,
        interpret=interpreting(), norm_keys=norm_keys,
    )  # fmt: skip
    dq, dv = gradients_like(q, v) if norm_keys else (torch.empty_like(q), torch.empty_like(v))
    grads = (dq, None if norm_keys else torch.empty_like(k), dv)
    for h in accumulator_passes(q.shape, R):
        view, packed = (lambda x, h=h: _heads(x, h)), (lambda x, h=h: _heads(x, h, packed=True))
        _backward_heads(
            *map(view, (q, k, v)), packed(order), key_valid, packed(buckets),
            stats=tuple(map(packed, stats)), lse=packed(lse), lse_total=packed(lse_total),
            grad_dot=packed(grad_dot), dout=view(dout), grads=tuple(map(view, grads)), **run,
        )  # fmt: skip
    return grads


def empty_heads(x: Tensor) -> Tensor:
    """An empty dense (B, H, L, d) tensor like x, its memory in x's order of dims where that
    is the projections' (b, l, h, d) (so a head merge after it is free), even when x itself is
    not dense (a column block of a wider projection); else `empty_like`'s."""
    B, H, L, d = x.shape
    if H > 1 and x.stride(2) > x.stride(1) > x.stride(3):
        return torch.empty(B, L, H, d, dtype=x.dtype, device=x.device).transpose(1, 2)
    return torch.empty_like(x)


def gradients_like(q: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Empty (dq, dv) in q's and v's layouts. Where q and v are the two column blocks of one
    (B, L, 2 H d) projection (`model.joint_projection`), dq and dv are so too: the
    projection's backward then reads them as one tensor instead of concatenating them."""
    B, H, L, d = q.shape
    joint = (B, L, 2 * H * d)
    together = (
        v.shape == q.shape
        and v.dtype == q.dtype
        and q.stride() == v.stride() == (L * 2 * H * d, d, 2 * H * d, 1)
        and q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
        and v.storage_offset() - q.storage_offset() == H * d
    )
    if not together:
        return empty_heads(q), empty_heads(v)
    both = torch.empty(joint, dtype=q.dtype, device=q.device).view(B, L, 2, H, d)
    return both[:, :, 0].transpose(1, 2), both[:, :, 1].transpose(1, 2)  # (B, H, L, d) each


ACCUMULATOR_BYTES = 64 << 20
"""Memory for the backward's fp32 round accumulators: heads are taken in passes that fit
(base @ 64K: two heads a pass, 4 passes of 8 launches a layer; each launch costs the host
tens of microseconds, which the GPU waits for at this size)."""


def accumulator_passes(shape: torch.Size, n_rounds: int) -> list[slice]:
    """Head groups of a (B, H, L, d) backward whose two fp32 accumulators fit ACCUMULATOR_BYTES
    (at least one head per pass; one pass when R = 1, which needs no accumulator)."""
    B, H, L, d = shape
    per_head = 2 * B * L * d * 4
    step = H if n_rounds == 1 else max(1, min(H, ACCUMULATOR_BYTES // per_head))
    return [slice(h, min(h + step, H)) for h in range(0, H, step)]


def _heads(x: Tensor | None, heads: slice, packed: bool = False) -> Tensor | None:
    """x[:, heads] for a (B, H, ...) tensor; `packed`: contiguous, as the kernels index it."""
    if x is None:
        return None
    return x[:, heads].contiguous() if packed else x[:, heads]


def _backward_heads(q, k, v, order, key_valid, buckets, *, grads, norm_keys, **run) -> None:
    """The rounds' backward for one group of heads, into `grads` (views of the results).

    Two phases, so that fewer fp32 accumulators are alive at once: dk and dv over every round,
    then dq over every round (2 fp32 (B, h, L, d) buffers, not 3; at R = 1 the kernels write
    the results directly). The same launches as round by round, reordered. With norm_keys
    the keys' gradient goes into q's accumulator, which the dq phase then completes.
    """
    from .triton_rounds import launch_round_backward

    R = order.shape[2]
    dq, dk, dv = grads
    if norm_keys and run["configs"].bwd is not None:
        _backward_heads_fused(q, v, order, key_valid, buckets, grads=(dq, dv), **run)
        return
    dk = dq if norm_keys else dk  # never written when the keys' gradient folds into dq
    side, run = (order, key_valid, buckets), dict(run, norm_keys=norm_keys)
    acc_k = _fp32_like(q) if R > 1 or norm_keys else dk  # norm_keys: q's accumulator
    acc_v = _fp32_like(v) if R > 1 else dv
    for r in range(R):
        launch_round_backward(
            q, k, v, *side, r, accumulators=(acc_k, acc_k, acc_v),
            grads=(dq, dk, dv) if r == R - 1 else None, parts=("dkdv",), **run,
        )  # fmt: skip
    del acc_v
    if not norm_keys:
        acc_k = None  # dk is complete: its accumulator can go before dq's is made
    acc_q = acc_k if norm_keys else _fp32_like(q) if R > 1 else dq
    for r in range(R):
        launch_round_backward(
            q, k, v, *side, r, accumulators=(acc_q, acc_q, dv),
            grads=(dq, dk, dv) if r == R - 1 else None, parts=("dq",), **run,
        )  # fmt: skip


def _backward_heads_fused(q, v, order, key_valid, buckets, *, grads, configs, **run) -> None:
    """Shared-QK keys: each round's dx (queries and keys) and dv in one launch
    (`triton_round_backward`), into two fp32 accumulators as the two-phase path keeps (none
    at R = 1: the one round writes the gradients)."""
    from .triton_round_backward import launch_round_backward_fused

    R = order.shape[2]
    accumulators = (_fp32_like(q), _fp32_like(v)) if R > 1 else grads
    for r in range(R):
        launch_round_backward_fused(
            q, v, order, key_valid, buckets, r, accumulators=accumulators,
            grads=grads if r == R - 1 else None, config=configs.bwd, **run,
        )  # fmt: skip


def _fp32_like(x: Tensor) -> Tensor:
    """An fp32 (B, H, L, d) contiguous accumulator shaped like x."""
    return torch.empty(x.shape, device=x.device, dtype=torch.float32)
