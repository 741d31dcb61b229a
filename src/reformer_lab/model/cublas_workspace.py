"""Hand cuBLAS's workspaces back to the caching allocator between the forward and backward pass.

torch gives each (thread, stream) its own cuBLAS workspace, allocated through the caching
allocator at the first matmul and kept for good: 32 MiB each on Hopper. The forward pass runs
on the caller's thread and the backward on autograd's own, so a training step holds two of
them, one idle, through its whole backward (at tiny @ 64K, 64 of its ~260 MB). Released at
the end of the forward, the idle one's block is the one the backward's first matmul reuses.
"""

from __future__ import annotations

import torch

RELEASE = True
"""False keeps the workspaces (for a comparison: `experiments/perf/profile_step.py --keep-workspaces`)."""


def release_cublas_workspaces(device: torch.device) -> None:
    """Free every idle cuBLAS workspace on CUDA (a no-op elsewhere, or inside a graph capture,
    whose workspaces belong to the graph). Safe at any point: a freed block is reused only in
    the order of its stream, after the kernels that used it."""
    if not RELEASE or device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # private; absent: keep them
    if clear is not None:
        clear()
