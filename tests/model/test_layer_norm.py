"""layer_norm_to: nn.LayerNorm's value and gradients, output in the requested dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reformer_lab.model import row_blocks
from reformer_lab.model.layer_norm import layer_norm_to


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.bfloat16, 1e-2)])
def test_value_and_gradients_equal_layer_norm(dtype, tol, monkeypatch):
    monkeypatch.setattr(row_blocks, "BLOCK_ELEMENTS", 16 * 5)  # blocks of 5 rows, one of 3
    torch.manual_seed(0)
    norm = nn.LayerNorm(16).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (3 + torch.randn(2, 9, 16, dtype=torch.float64)).requires_grad_()
    grad = torch.randn(2, 9, 16, dtype=torch.float64)

    out = layer_norm_to(x, norm, dtype)
    assert out.dtype == dtype and out.shape == x.shape
    got = torch.autograd.grad(out, [x, norm.weight, norm.bias], grad.to(dtype))
    ref_out = norm(x)
    ref = torch.autograd.grad(ref_out, [x, norm.weight, norm.bias], grad.to(dtype).double())
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol)
    for name, a, b in zip(("x", "weight", "bias"), got, ref):
        assert a.dtype == torch.float64, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_under_autocast_it_computes_in_fp32():
    norm = nn.LayerNorm(8)
    x = torch.randn(4, 8) * 100 + 1000  # a large mean: bf16 arithmetic would lose the rows
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer_norm_to(x, norm, torch.bfloat16)
    torch.testing.assert_close(out.float(), norm(x), rtol=1e-2, atol=1e-2)


def test_grad_into_receives_the_input_gradient_added():
    """With grad_into, x's gradient is added into that buffer (a strided half here, as the
    reversible backward's dY2 can be) and not returned; the parameters' gradients still are."""
    torch.manual_seed(1)
    norm = nn.LayerNorm(8).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 5, 8, dtype=torch.float64)
    ref = torch.autograd.grad(norm(x), [x, norm.weight, norm.bias], grad)
    both = torch.randn(2, 5, 16, dtype=torch.float64)
    into = both[..., 8:]  # a view with row stride 16
    before = into.clone()
    got = torch.autograd.grad(
        layer_norm_to(x, norm, torch.float64, grad_into=into),
        [x, norm.weight, norm.bias], grad, allow_unused=True,
    )  # fmt: skip
    assert got[0] is None
    torch.testing.assert_close(into, before + ref[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(got[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
