"""The residual streams in host memory, moved to the device a sequence chunk at a time.

The reversible layers (sec 3) hold four (B, L, dim) buffers whatever the depth: the two
streams Y1, Y2 and their gradients dY1, dY2, in fp32. At long lengths they are most of a
step's memory (tiny @ 1M: 4 x 268 MB of 2.2 GB). With `ReformerConfig.offload_streams` they
live here instead, in page-locked host memory where the device is CUDA (so that copies are
asynchronous and can be recorded in a CUDA graph), and `streamed.py` loads a chunk, updates
it on the device and stores it back: the device holds a few chunks of them at a time.

The buffers are kept for the next call of the same shape (a captured step replays copies to
and from these very addresses), one set per (B, L, dim, dtype, device).
"""

from __future__ import annotations

import torch
from torch import Tensor

NAMES = ("y1", "y2", "dy1", "dy2")


class HostStreams:
    """The four host buffers of each stream shape seen so far (see the module docstring)."""

    def __init__(self) -> None:
        self._sets: dict[tuple, dict[str, Tensor]] = {}

    def buffers(
        self, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device
    ) -> dict[str, Tensor]:
        """{name: (B, L, dim) host tensor} for streams of this shape and dtype on `device`."""
        key = (*shape, dtype, device)
        if key not in self._sets:
            pinned = device.type == "cuda"
            self._sets[key] = {
                name: torch.empty(shape, dtype=dtype, pin_memory=pinned) for name in NAMES
            }
        return self._sets[key]

    @property
    def nbytes(self) -> int:
        """Host bytes held."""
        return sum(
            t.numel() * t.element_size() for bufs in self._sets.values() for t in bufs.values()
        )

    def release(self) -> None:
        """Drop every buffer (a captured step that replays copies to them must go first)."""
        self._sets.clear()


def load(host: Tensor, s: slice, device: torch.device) -> Tensor:
    """A new device tensor holding host[:, s]: (B, l, dim), one contiguous copy per batch row."""
    B, _, dim = host.shape
    out = torch.empty((B, s.stop - s.start, dim), dtype=host.dtype, device=device)
    for b in range(B):
        out[b].copy_(host[b, s], non_blocking=True)
    return out


def store(host: Tensor, s: slice, chunk: Tensor) -> None:
    """host[:, s] = chunk (B, l, dim), asynchronously where the host memory is page-locked;
    the copies are ordered on the current stream before anything issued after them."""
    for b in range(host.shape[0]):
        host[b, s].copy_(chunk[b], non_blocking=True)
