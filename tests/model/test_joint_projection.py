"""`joint_projection` computes what one F.linear per weight computes, values and gradients,
and reads gradients that are column blocks of one buffer (as the fused LSH backward returns
them: `rounds.gradients_like`) as that buffer, without a copy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reformer_lab.kernels.rounds import empty_heads, gradients_like
from reformer_lab.model import joint_projection as jp


def _grads(outputs, grads, leaves):
    return torch.autograd.grad(outputs, leaves, grads)  # the grads reach the node as they are


@pytest.mark.parametrize("joined", [True, False])
def test_equals_one_linear_per_weight(joined, monkeypatch):
    x = torch.randn(2, 7, 16, requires_grad=True)
    weights = [torch.randn(n, 16, requires_grad=True) for n in (8, 12)]
    outs = jp.joint_projection(x, *weights)
    refs = [F.linear(x, w) for w in weights]
    for got, want in zip(outs, refs):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    buffer = torch.randn(2, 7, 20)
    grads = (
        (buffer[..., :8], buffer[..., 8:]) if joined else tuple(torch.randn_like(r) for r in refs)
    )
    seen = []
    real = jp.column_blocks_of_one
    monkeypatch.setattr(
        jp, "column_blocks_of_one", lambda parts: seen.append(real(parts)) or seen[-1]
    )
    got = _grads(outs, grads, [x, *weights])
    want = _grads(refs, grads, [x, *weights])
    for name, a, b in zip(("dx", "dw1", "dw2"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    if joined:  # the buffer itself, not a copy
        assert seen[0] is not None and seen[0].data_ptr() == buffer.data_ptr()
    else:
        assert seen == [None]


def test_column_blocks_of_one_refuses_what_is_not_one_buffer():
    buffer = torch.randn(3, 10)
    assert jp.column_blocks_of_one((buffer[:, :4], buffer[:, 4:])).shape == (3, 10)
    assert jp.column_blocks_of_one((buffer[:, :4], buffer[:, 5:])) is None  # a gap
    assert jp.column_blocks_of_one((buffer[:, 4:], buffer[:, :4])) is None  # out of order
    assert jp.column_blocks_of_one((buffer[:, :4], buffer[:, 4:8])) is None  # rows wider
    assert jp.column_blocks_of_one((buffer[:, :4], torch.randn(3, 6))) is None
    assert jp.column_blocks_of_one((buffer[:, :4], None)) is None


def test_gradients_like_follows_a_joint_projection():
    """q, v the heads of one (B, L, 2 H d) projection -> dq, dv the same blocks of one new
    buffer, in the (b, l, h, d) memory order; otherwise each in its own dense tensor."""
    B, H, L, d = 2, 3, 5, 4
    y = torch.randn(B, L, 2 * H * d)
    q, v = (t.view(B, L, H, d).transpose(1, 2) for t in y.split(H * d, dim=-1))
    dq, dv = gradients_like(q, v)
    assert dq.shape == dv.shape == q.shape and dq.stride() == q.stride() == dv.stride()
    merged = [t.transpose(1, 2).reshape(B, L, H * d) for t in (dq, dv)]
    assert merged[0].data_ptr() == dq.data_ptr()  # a view: the head merge is free
    assert jp.column_blocks_of_one(tuple(merged)) is not None
    apart = torch.randn(B, L, H * d).view(B, L, H, d).transpose(1, 2)
    dq, dv = gradients_like(q, apart)
    assert dq.untyped_storage().data_ptr() != dv.untyped_storage().data_ptr()
    assert dq.transpose(1, 2).is_contiguous() and empty_heads(q).transpose(1, 2).is_contiguous()
