"""A branch's update of an fp32 residual stream, y += sign (d + b), in place (sec 3).

    y (B, L, D)  the stream (or a sequence chunk of it), updated in place
    d (B, L, D)  the branch's last matmul without its bias, in the matmul's dtype
    b (D,)       that matmul's bias

The reversible forward adds (sign +1) and the recomputation subtracts (sign -1) the very same
d and b, so X = Y - (d + b) undoes Y = X + (d + b) up to the fp32 rounding of the stream.
On CUDA (backend 'auto' or 'triton') this is one Triton kernel
(`reformer_lab.kernels.triton_stream_add`) in place of the matmul's bias epilogue and torch's
mixed-dtype add; the torch code below is the CPU path and the reference it is tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .fused import triton_allowed

FUSED_ON_CPU_UNDER_INTERPRETER = False
"""Tests set this to run the fused kernel on CPU tensors under TRITON_INTERPRET=1."""


def fused_usable(y: Tensor, backend: str) -> bool:
    """True when `add_update` runs the Triton kernel on the stream y."""
    if y.dtype != torch.float32 or y.dim() != 3 or y.stride(-1) != 1:
        return False
    return triton_allowed(y, backend, FUSED_ON_CPU_UNDER_INTERPRETER)


def add_update(y: Tensor, d: Tensor, bias: Tensor | None, sign: int, backend: str) -> None:
    """y += sign * (d + bias) IN PLACE, d and bias taken in fp32; no autograd."""
    if d.shape != y.shape or (bias is not None and bias.shape != y.shape[-1:]):
        raise ValueError(f"update {tuple(d.shape)} and bias for a stream {tuple(y.shape)}")
    if fused_usable(y, backend):
        from reformer_lab.kernels.triton_stream_add import stream_add

        stream_add(y, d.contiguous(), bias, float(sign))
        return
    step = d.to(y.dtype) if bias is None else d.to(y.dtype) + bias.to(y.dtype)
    y.add_(step, alpha=sign)
