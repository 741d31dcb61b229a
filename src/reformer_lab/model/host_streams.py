"""The residual streams in host memory, moved to the device a sequence chunk at a time.

The reversible layers (sec 3) hold four (B, L, dim) buffers whatever the depth: the two
streams Y1, Y2 and their gradients dY1, dY2, in fp32. At long lengths they are most of a
step's memory (tiny @ 1M: 4 x 268 MB of 2.2 GB). With `ReformerConfig.offload_streams` they
live here instead, in page-locked host memory where the device is CUDA (so that copies are
asynchronous and can be recorded in a CUDA graph), and `streamed.py` loads a chunk, updates
it on the device and stores it back: the device holds a few chunks of them at a time.

The buffers are kept for the next call of the same shape (a captured step replays copies to
and from these very addresses), one set per (B, L, dim, dtype, device).

On CUDA the copies of a pass overlap with its compute (`ChunkPass`): the next chunk's loads run
on one copy stream while the current chunk is computed, and a chunk's stores on another once
it is done (the two directions use separate copy engines).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

NAMES = ("y1", "y2", "dy1", "dy2")


class HostStreams:
    """The four host buffers of each stream shape seen so far (see the module docstring)."""

    def __init__(self) -> None:
        self._sets: dict[tuple, dict[str, Tensor]] = {}
        self._copy_streams: dict[torch.device, tuple] = {}

    def __deepcopy__(self, memo: dict) -> HostStreams:
        """A copied model gets buffers of its own, made at its first call (these are scratch
        space, and CUDA streams cannot be copied)."""
        return HostStreams()

    def __getstate__(self) -> dict:
        return {}  # pickled (torch.save of a model): the scratch space stays behind

    def __setstate__(self, state: dict) -> None:
        self.__init__()

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

    def copy_streams(self, device: torch.device) -> tuple:
        """(loads, stores): the two CUDA streams the copies to and from `device` run on."""
        if device not in self._copy_streams:
            self._copy_streams[device] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
        return self._copy_streams[device]

    def release(self) -> None:
        """Drop every buffer (a captured step that replays copies to them must go first)."""
        self._sets.clear()


def load(host: Tensor, s: slice, device: torch.device) -> Tensor:
    """A new device tensor holding host[:, s]: (B, l, dim), one contiguous copy per batch row."""
    out = empty_chunk(host, s, device)
    copy_in(out, host, s)
    return out


def empty_chunk(host: Tensor, s: slice, device: torch.device) -> Tensor:
    """An empty device tensor for host[:, s]: (B, l, dim)."""
    B, _, dim = host.shape
    return torch.empty((B, s.stop - s.start, dim), dtype=host.dtype, device=device)


def copy_in(out: Tensor, host: Tensor, s: slice) -> None:
    """out = host[:, s], on the current stream, one contiguous copy per batch row."""
    for b in range(host.shape[0]):
        out[b].copy_(host[b, s], non_blocking=True)


def store(host: Tensor, s: slice, chunk: Tensor) -> None:
    """host[:, s] = chunk (B, l, dim), asynchronously where the host memory is page-locked;
    the copies are ordered on the current stream before anything issued after them."""
    for b in range(host.shape[0]):
        host[b, s].copy_(chunk[b], non_blocking=True)


class ChunkPass:
    """One pass over the sequence chunks: iterating yields (s, {name: device chunk}) with the
    named host buffers loaded at chunk s; `store` copies a chunk back. On CUDA the loads of the
    next chunk are issued on a copy stream before the current one is handed out, and each store
    on another stream after the work queued so far; a stored chunk's memory is let go only once
    the main stream has waited for its copy. Both streams join the main one at the end, so the
    pass is ordered like the synchronous one (and can be captured in a CUDA graph). Elsewhere
    the copies are plain and in order."""

    def __init__(
        self,
        streams: HostStreams,
        host: dict[str, Tensor],
        chunks: list[slice],
        loads: tuple[str, ...],
        device: torch.device,
    ) -> None:
        self.host, self.chunks, self.loads, self.device = host, chunks, loads, device
        self.overlapped = device.type == "cuda"
        self._kept: list[tuple[object, Tensor]] = []  # (store done, chunk) not yet let go
        if self.overlapped:
            self.main = torch.cuda.current_stream(device)
            self.load_stream, self.store_stream = streams.copy_streams(device)

    def __iter__(self) -> Iterator[tuple[slice, dict[str, Tensor]]]:
        if not self.overlapped:
            for s in self.chunks:
                yield s, {name: load(self.host[name], s, self.device) for name in self.loads}
            return
        self.load_stream.wait_stream(self.main)  # the host buffers' last stores are done
        self.store_stream.wait_stream(self.main)
        ahead = self._prefetch(self.chunks[0])
        for i, s in enumerate(self.chunks):
            chunk, loaded = ahead
            self.main.wait_event(loaded)
            if i + 1 < len(self.chunks):
                ahead = self._prefetch(self.chunks[i + 1])
            kept, self._kept = self._kept, []
            yield s, chunk
            for done, _ in kept:  # the chunk before's stores: their memory may go now
                self.main.wait_event(done)
            del chunk, kept
        for done, _ in self._kept:
            self.main.wait_event(done)
        self._kept = []
        self.main.wait_stream(self.load_stream)
        self.main.wait_stream(self.store_stream)

    def _prefetch(self, s: slice) -> tuple[dict[str, Tensor], object]:
        """Chunk s's loads, issued on the load stream after the main stream's work so far
        (their memory comes from the main stream's allocator); returns them and their event."""
        chunk = {name: empty_chunk(self.host[name], s, self.device) for name in self.loads}
        self.load_stream.wait_stream(self.main)
        with torch.cuda.stream(self.load_stream):
            for name, t in chunk.items():
                copy_in(t, self.host[name], s)
        return chunk, self.load_stream.record_event()

    def store(self, name: str, s: slice, chunk: Tensor) -> None:
        """host[name][:, s] = chunk (B, l, dim), once the work queued so far has made it."""
        if not self.overlapped:
            store(self.host[name], s, chunk)
            return
        self.store_stream.wait_stream(self.main)
        with torch.cuda.stream(self.store_stream):
            store(self.host[name], s, chunk)
        self._kept.append((self.store_stream.record_event(), chunk))
