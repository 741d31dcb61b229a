"""Whether a call may take the fused Triton kernels (`reformer_lab.kernels`): the one rule
for every part of the model that has them (LSH rounds, LayerNorm, hashing).

A call may when the backend is 'auto' or 'triton', its tensors are on CUDA (or on the CPU
under TRITON_INTERPRET=1, where a test asks for it), and triton imports. Each part then adds
its own conditions on shapes and dtypes; the torch code stays the CPU path and the oracle.
"""

from __future__ import annotations

from torch import Tensor


def triton_allowed(x: Tensor, backend: str, on_cpu_under_interpreter: bool) -> bool:
    if backend not in ("auto", "triton"):
        return False
    try:
        from reformer_lab import kernels
    except ImportError:
        return False
    if not x.is_cuda and not (on_cpu_under_interpreter and kernels.interpreting()):
        return False
    return kernels.triton_available()
