"""Facts about the memory a strided tensor addresses, for code that writes into given buffers."""

from __future__ import annotations

from torch import Tensor


def no_self_overlap(t: Tensor) -> bool:
    """No two indices of t address one element: each stride spans the dims inside it (false
    for an expanded tensor, whose stride 0 repeats elements)."""
    extent = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n > 1):
        if stride < extent:
            return False
        extent = stride * size
    return True


def byte_span(t: Tensor) -> tuple[int, int]:
    """[first, last + 1) byte addresses t touches (non-negative strides)."""
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()
