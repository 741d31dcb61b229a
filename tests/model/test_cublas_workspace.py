"""Releasing cuBLAS's idle workspaces gives their bytes back to the caching allocator (GPU)."""

from __future__ import annotations

import pytest
import torch

from reformer_lab.model.cublas_workspace import release_cublas_workspaces


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuBLAS workspaces live on a GPU")
def test_release_frees_the_workspace_a_matmul_made_and_the_next_matmul_still_works():
    a = torch.randn(256, 256, device="cuda")
    release_cublas_workspaces(a.device)
    before = torch.cuda.memory_allocated()
    want = a @ a  # makes this thread's workspace
    with_workspace = torch.cuda.memory_allocated()
    release_cublas_workspaces(a.device)
    assert torch.cuda.memory_allocated() <= with_workspace - (1 << 20)  # >= 1 MiB returned
    assert torch.cuda.memory_allocated() == before + want.untyped_storage().nbytes()
    torch.testing.assert_close(a @ a, want)
