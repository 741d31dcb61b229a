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


def same_elements(a: Tensor, b: Tensor) -> bool:
    """a and b address the very same elements in the same order: one start, one shape, and
    one stride along every dim of more than one element (a size-1 dim's stride is arbitrary,
    and views made by autograd may differ there)."""
    if a.data_ptr() != b.data_ptr() or a.shape != b.shape:
        return False
    return all(n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()))
