"""`chunked_attention_triton`: the fused kernel behind `chunked_attention_torch`'s contract.

Importing this module needs neither triton nor CUDA; the kernels are imported on first call.
Inputs the kernel does not handle raise ValueError before any work, so the backend picker
(`reformer_lab.model.attention.backend`) can fall back to the torch reference.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_CHUNK_SIZES = (16, 32, 64, 128, 256)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def triton_available() -> bool:
    """True when triton imports and the kernel module loads (says nothing about CUDA)."""
    try:
        from . import triton_chunked, triton_rounds  # noqa: F401
    except Exception:  # ImportError, or a triton too old for the kernels' syntax
        return False
    return True


def interpreting() -> bool:
    """True under Triton's CPU interpreter (TRITON_INTERPRET=1, read when triton jit-decorates)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pos: Tensor,
    chunk_size: int,
    key_valid: Tensor | None,
    buckets: Tensor | None,
    bias: Tensor | None,
) -> None:
    if bias is not None:
        raise ValueError("the Triton kernel takes no score bias; use the torch backend for bias")
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must all be (G, L, d); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"q, k, v must share one dtype among {SUPPORTED_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    G, L, d = q.shape
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"head dim {d} is not supported by the Triton kernel; use one of {SUPPORTED_HEAD_DIMS}"
        )
    if chunk_size not in SUPPORTED_CHUNK_SIZES:
        raise ValueError(
            f"chunk_size {chunk_size} is not supported by the Triton kernel; use one of {SUPPORTED_CHUNK_SIZES}"
        )
    if L == 0 or L % chunk_size:
        raise ValueError(
            f"sequence length {L} must be a positive multiple of chunk_size {chunk_size}"
        )
    if G > 65535:
        raise ValueError(f"G = {G} groups exceed the CUDA grid's 65535 on axis 1; split the batch")
    if L * d >= 2**31:
        raise ValueError(f"one group's L * d = {L * d} must stay below 2**31 (int32 offsets)")
    devices = {t.device for t in (q, k, v, pos, key_valid, buckets) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device; got {sorted(map(str, devices))}")
    if not q.is_cuda and not interpreting():
        raise ValueError("the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)")
    for name, t in (("pos", pos), ("buckets", buckets)):
        if t is not None and (
            t.shape != (G, L) or t.dtype.is_floating_point or t.dtype == torch.bool
        ):
            raise ValueError(
                f"{name} must be an integer tensor of shape {(G, L)}; got {t.dtype} {tuple(t.shape)}"
            )
    if key_valid is not None and (key_valid.shape != (G, L) or key_valid.dtype != torch.bool):
        raise ValueError(
            f"key_valid must be a bool tensor of shape {(G, L)}; got {key_valid.dtype} {tuple(key_valid.shape)}"
        )


def _check_configs(configs) -> None:
    for name in ("fwd", "dkdv", "dq"):
        cfg = getattr(configs, name)
        for size in (cfg.tile, cfg.step):
            if size not in (16, 32, 64, 128, 256):
                raise ValueError(f"{name} tile/step {size} must be a power of two in [16, 256]")
        if cfg.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"{name}.num_warps {cfg.num_warps} must be one of 1, 2, 4, 8, 16")


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pos, key_valid, buckets, chunk_size, scale, causal, configs):
        from .triton_chunked import launch_forward

        interpret = interpreting()
        out, lse, row_stats = launch_forward(
            q,
            k,
            v,
            pos,
            key_valid,
            buckets,
            chunk_size=chunk_size,
            scale=scale,
            causal=causal,
            config=configs.fwd,
            interpret=interpret,
            stats=any(ctx.needs_input_grad[:3]),
        )
        if row_stats is not None:
            ctx.save_for_backward(q, k, v, pos, key_valid, buckets, out, *row_stats)
        ctx.options = dict(
            chunk_size=chunk_size, scale=scale, causal=causal, configs=configs, interpret=interpret
        )
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlse):
        from .triton_chunked import launch_backward

        q, k, v, pos, key_valid, buckets, out, row_max, log_sum = ctx.saved_tensors
        dout = torch.zeros_like(out) if dout is None else dout.contiguous()
        dlse = None if dlse is None else dlse.float().contiguous()
        dq, dk, dv = launch_backward(
            q, k, v, pos, key_valid, buckets, out, (row_max, log_sum), dout, dlse, **ctx.options
        )
        return dq, dk, dv, None, None, None, None, None, None, None


def chunked_attention_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pos: Tensor,
    chunk_size: int,
    *,
    scale: float,
    causal: bool,
    key_valid: Tensor | None = None,
    buckets: Tensor | None = None,
    bias: Tensor | None = None,
    configs=None,
) -> tuple[Tensor, Tensor]:
    """`chunked_attention_torch`'s signature and results, fused: out (G, L, d), lse (G, L) fp32.

    Differentiable w.r.t. q, k, v, also through lse. `configs` (a `KernelConfigs`) overrides the
    launch shapes; None takes `default_configs(chunk_size, d, dtype)`. pos must fit in int32.
    Raises ValueError for inputs it does not handle (bias, head dims outside
    SUPPORTED_HEAD_DIMS, chunk sizes outside SUPPORTED_CHUNK_SIZES, CPU tensors without
    TRITON_INTERPRET=1) and ImportError when triton is missing.
    """
    _check_inputs(q, k, v, pos, chunk_size, key_valid, buckets, bias)
    from .triton_chunked import default_configs

    if configs is None:
        configs = default_configs(chunk_size, q.shape[-1], q.dtype)
    _check_configs(configs)
    return _ChunkedAttention.apply(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        pos.to(torch.int32).contiguous(),  # (G, L)
        None if key_valid is None else key_valid.contiguous().view(torch.uint8),  # (G, L)
        None if buckets is None else buckets.to(torch.int32).contiguous(),  # (G, L)
        chunk_size,
        float(scale),
        bool(causal),
        configs,
    )
