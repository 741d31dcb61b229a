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
