"""The fused stream update computes what `stream_add.add_update`'s torch path computes, and the
feed-forward branch's reversible passes through it undo each other.

Runs on CUDA when there is one, else under Triton's CPU interpreter (see test_kernel_triton.py
for the fresh-process fallback used here).
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_interpreter import DEVICE, in_process, interpreted

# isort: split

from reformer_lab.kernels import triton_stream_add as tsa
from reformer_lab.model import stream_add
from tests.interpreter_rerun import rerun_in_fresh_process

tsa = interpreted(tsa, "_stream_add_kernel")


@in_process
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("width", [64, 48, 1536])  # 1536: two column blocks of 1024
def test_fused_update_equals_torch_path(sign, with_bias, width, monkeypatch):
    """A sequence chunk of a (B, L, D) stream with B > 1 (rows not evenly spaced) updated in
    place by a bf16 update and an fp32 bias; the rows outside the chunk untouched."""
    monkeypatch.setattr(stream_add, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    stream = torch.randn(3, 20, width, device=DEVICE)
    d = torch.randn(3, 8, width, device=DEVICE).to(torch.bfloat16)
    bias = torch.randn(width, device=DEVICE) if with_bias else None
    results = {}
    for backend in ("triton", "torch"):
        y = stream.clone()
        chunk = y[:, 5:13]  # (3, 8, D), batch stride 20 D
        assert not chunk.is_contiguous()
        assert stream_add.fused_usable(chunk, backend) == (backend == "triton")
        stream_add.add_update(chunk, d, bias, sign, backend)
        results[backend] = y
    fused, ref = results["triton"], results["torch"]
    expected = stream[:, 5:13] + sign * (d.float() + (bias if with_bias else 0))
    torch.testing.assert_close(fused[:, 5:13], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-5)
    assert torch.equal(fused[:, :5], stream[:, :5]) and torch.equal(fused[:, 13:], stream[:, 13:])


@in_process
def test_bad_update_fails_before_any_work(monkeypatch):
    monkeypatch.setattr(stream_add, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    y = torch.zeros(1, 4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="update"):
        stream_add.add_update(y, torch.ones(1, 4, 4, device=DEVICE), None, 1, "triton")
    with pytest.raises(ValueError, match="update"):
        stream_add.add_update(y, torch.ones_like(y), torch.ones(4, device=DEVICE), 1, "triton")
    assert not y.any()


@in_process
def test_feed_forward_branch_passes_undo_each_other(monkeypatch):
    """`FeedForwardBranch.add_into` then `recompute_backward` with the fused update (the
    bias outside the graph, its gradient 1^T grad) restore the stream and give the gradients
    autograd gives for G(x) itself."""
    from reformer_lab.model import ReformerConfig
    from reformer_lab.model.lm import FeedForwardBranch

    monkeypatch.setattr(stream_add, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    cfg = ReformerConfig(vocab_size=8, dim=32, depth=1, heads=2, dropout=0.0, backend="triton")
    branch = FeedForwardBranch(cfg).to(DEVICE)
    x = torch.randn(2, 12, 32, device=DEVICE)
    y0 = torch.randn(2, 12, 32, device=DEVICE)
    grad = torch.randn(2, 12, 32, device=DEVICE)
    assert not branch.drops and stream_add.fused_usable(y0, branch.backend)
    y = y0.clone()
    with torch.no_grad():
        branch.add_into(y, x)
        torch.testing.assert_close(y, y0 + branch(x), rtol=0, atol=1e-5)
    dx = torch.zeros_like(x)
    grads = branch.recompute_backward(x, grad, y=y, dx=dx)
    torch.testing.assert_close(y, y0, rtol=0, atol=1e-5)
    leaf = x.clone().requires_grad_()
    params = list(branch.parameters())
    want = torch.autograd.grad(branch(leaf), [leaf, *params], grad)
    assert grads[-1] is not None  # the output bias, formed outside the graph
    for name, a, b in zip(["dx", *(n for n, _ in branch.named_parameters())], [dx, *grads], want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_in_fresh_process():
    """This file's tests, in a new interpreter process (see test_kernel_triton.py)."""
    rerun_in_fresh_process(__file__)
