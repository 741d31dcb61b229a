"""Picks the chunked-attention implementation: the torch reference, or the fused Triton kernel.

'auto' takes Triton for CUDA tensors when the kernel can handle the call, torch otherwise;
'triton' insists (and says why it can't), 'torch' always takes the reference.
"""

from __future__ import annotations

from torch import Tensor

from .chunked import chunked_attention_torch


def _triton_kernel():
    try:
        from reformer_lab.kernels import chunked_attention_triton, triton_available
    except ImportError:
        return None
    return chunked_attention_triton if triton_available() else None


def chunked_attention(
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
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """`chunked_attention_torch`'s contract, on the backend asked for. Returns (out, lse)."""
    args = (q, k, v, pos, chunk_size)
    kwargs = dict(scale=scale, causal=causal, key_valid=key_valid, buckets=buckets, bias=bias)
    if backend == "torch" or (backend == "auto" and not q.is_cuda):
        return chunked_attention_torch(*args, **kwargs)
    kernel = _triton_kernel()
    if backend == "triton":
        if kernel is None or not q.is_cuda:
            raise RuntimeError(
                "backend='triton' needs CUDA tensors and an importable triton; "
                "set backend='auto' or 'torch' to use the torch implementation"
            )
        return kernel(*args, **kwargs)
    if kernel is None or bias is not None:
        return chunked_attention_torch(*args, **kwargs)
    try:
        return kernel(*args, **kwargs)
    except ValueError:  # a shape or option the kernel does not support
        return chunked_attention_torch(*args, **kwargs)
