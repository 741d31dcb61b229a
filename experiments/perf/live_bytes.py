"""Peak live tensor bytes on any device: the CPU stand-in for `torch.cuda.max_memory_allocated`.

    with LiveBytes() as meter:
        loss = model.loss(x, y).loss
        loss.backward()
    meter.peak          # bytes of tensor storage alive at the worst moment
    meter.peak_owners   # the largest storages alive then, as (bytes, op that made them)

Every storage that an operator creates (forward, autograd backward, kernel wrappers) is counted
from its creation until Python or C++ lets it go (views and in-place results are not new), so the peak is what a caching allocator would
report without its rounding (CUDA rounds each block up to 512 bytes). Storages that existed
before the meter started (parameters, inputs) are not counted, as `reset_peak_memory_stats`
followed by `max_memory_allocated - memory_allocated` would not count them either.

It lets the memory of a step be measured and broken down where no GPU is at hand: the fused
Triton kernels run under TRITON_INTERPRET=1 and allocate through torch exactly as on CUDA.
"""

from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Counts storage bytes alive over time; `peak` is the maximum, in bytes."""

    def __init__(self, owners: int | None = 12) -> None:
        """owners: how many of the largest storages alive at the peak to keep (None: all)."""
        super().__init__()
        self.live = 0
        self.peak = 0
        self.peak_owners: list[tuple[int, str]] = []
        self._owners = owners
        self._alive: dict[int, tuple[int, str]] = {}  # storage key -> (bytes, op)
        self._refs: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage()._cdata
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        grew = False
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata in inputs:
                continue  # a view or an in-place result: no new storage
            label = (
                f"{func.overloadpacket.__name__} {str(t.dtype)[6:]}"
                if isinstance(t, torch.Tensor)
                else ""
            )
            if label and self._track(t, label):
                grew = True
        if grew and self.live > self.peak:
            self.peak = self.live
            top = sorted(self._alive.values(), reverse=True)[: self._owners]  # all if None
            self.peak_owners = list(top)
        return out

    def _track(self, t: torch.Tensor, op: str) -> bool:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._alive or storage.nbytes() == 0:
            return False
        self._alive[key] = (storage.nbytes(), op)
        self.live += storage.nbytes()
        self._refs[key] = weakref.ref(storage, lambda _, key=key: self._free(key))
        return True

    def _free(self, key: int) -> None:
        nbytes, _ = self._alive.pop(key, (0, ""))
        self._refs.pop(key, None)
        self.live -= nbytes

    def by_op(self) -> Counter:
        """Bytes alive at the peak, summed by the op that created them (largest owners only)."""
        counts: Counter = Counter()
        for nbytes, op in self.peak_owners:
            counts[op] += nbytes
        return counts
