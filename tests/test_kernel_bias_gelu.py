"""The fused bias + GELU kernels compute what `bias_gelu`'s torch path computes, and the
feed-forward that uses them equals nn.Linear -> nn.GELU -> nn.Linear.

Oracle: the torch path on the very inputs the kernels get, and autograd through nn.GELU in
float64. Every case draws fresh inputs. Runs on CUDA when there is one, else under Triton's
CPU interpreter (see test_kernel_triton.py for the fresh-process fallback used here).
"""

from __future__ import annotations

import pytest
import torch

from tests.kernel_interpreter import DEVICE, ON_GPU, READY, in_process, interpreted

# isort: split

from reformer_lab.kernels import triton_bias_gelu as tbg
from reformer_lab.model import bias_gelu as bg
from reformer_lab.model.feedforward import FeedForward
from reformer_lab.model.matmul_bias_grad import linear
from tests.interpreter_rerun import rerun_in_fresh_process

tbg = interpreted(tbg, "_bias_gelu_fwd_kernel")


def _exact(pre: torch.Tensor, bias: torch.Tensor, grad: torch.Tensor):
    """(h, d pre, d bias) by autograd through nn.GELU in float64."""
    p = pre.double().requires_grad_()
    b = bias.double().requires_grad_()
    h = torch.nn.functional.gelu(p + b)
    return (h, *torch.autograd.grad(h, [p, b], grad.double()))


@in_process
@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((1, 37, 256), torch.bfloat16),  # tiny's d_ff, rows not a multiple of a block
        ((2, 70, 2048), torch.bfloat16),  # base's d_ff: eight column slices, several row steps
        ((3, 5, 100), torch.float32),  # F not a power of two, masked columns
        ((9, 48), torch.float16),  # plain (N, F) rows
    ],
)
def test_fused_equals_torch_path_and_exact_gelu(shape, dtype, monkeypatch):
    monkeypatch.setattr(bg, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    F = shape[-1]
    pre = (3 * torch.randn(shape, device=DEVICE)).to(dtype)  # into both tails of GELU
    bias = torch.randn(F, device=DEVICE)
    grad = torch.randn(shape, device=DEVICE).to(dtype)
    results = {}
    for fused in (True, False):
        assert bg.fused_usable(pre, "triton" if fused else "torch") == fused
        p, b = pre.detach().requires_grad_(), bias.detach().requires_grad_()
        h = bg.bias_gelu(p, b, fused=fused)
        results[fused] = (h, *torch.autograd.grad(h, [p, b], grad))
    assert results[True][0].dtype == dtype and results[True][2].dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    exact = _exact(pre, bias, grad)
    for name, a, b, e in zip(("h", "d pre", "d bias"), results[True], results[False], exact):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=name)
        torch.testing.assert_close(a.double(), e, rtol=tol, atol=tol, msg=f"{name} vs float64")


@in_process
def test_every_element_written():
    """Outputs start as garbage (torch.empty): a tile the grid misses would show here."""
    pre = torch.randn(3, 131, 300, device=DEVICE)  # 393 rows, 2 column slices (256 + 44)
    bias = torch.randn(300, device=DEVICE)
    grad = torch.randn_like(pre)
    h = tbg.bias_gelu_forward(pre, bias)
    d_pre, d_bias = tbg.bias_gelu_backward(grad, pre, bias)
    want = _exact(pre, bias, grad)
    for got, exact in zip((h, d_pre, d_bias), want):
        torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-4)


@in_process
def test_kernels_erf_is_exact_to_a_few_ulps_of_one():
    """The kernels' erf (Abramowitz & Stegun 7.1.26) against float64 GELU over both tails:
    GELU within 3e-7 absolute plus fp32's rounding of the result (6e-8 relative), GELU'
    within 3e-7 likewise, fp32 in and out (its float64 error is 7e-8; fp32 evaluation adds the
    rest)."""
    z = torch.linspace(-12, 12, 24001, device=DEVICE)[None, :].repeat(2, 1)  # (2, 24001)
    zero = torch.zeros(z.shape[-1], device=DEVICE)
    grad = torch.ones_like(z)
    h = tbg.bias_gelu_forward(z, zero)
    d_pre, _ = tbg.bias_gelu_backward(grad, z, zero)
    h_exact, d_exact, _ = _exact(z, zero, grad)
    assert ((h.double() - h_exact).abs() - 6e-8 * h_exact.abs()).max() < 3e-7
    assert ((d_pre.double() - d_exact).abs() - 6e-8 * d_exact.abs()).max() < 3e-7


@in_process
@pytest.mark.parametrize("autocast,dropout", [(False, 0.0), (True, 0.0), (False, 0.3)])
def test_feed_forward_equals_linear_gelu_linear(autocast, dropout, monkeypatch):
    """The fused FeedForward (first matmul without its bias, then bias_gelu) against the same
    module on the torch backend: output and every parameter's gradient; with dropout, the
    same seed gives both the same mask."""
    monkeypatch.setattr(bg, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    torch.manual_seed(0)
    fused = FeedForward(32, 128, dropout, backend="triton").to(DEVICE)
    plain = FeedForward(32, 128, dropout, backend="torch").to(DEVICE)
    plain.load_state_dict(fused.state_dict())  # the same keys: checkpoints load either way
    x = torch.randn(2, 19, 32, device=DEVICE)
    grad = torch.randn(2, 19, 32, device=DEVICE)
    results = []
    for ff in (fused, plain):
        leaf = x.detach().requires_grad_()
        torch.manual_seed(1)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            out = ff(leaf)
        grads = torch.autograd.grad(out, [leaf, *ff.parameters()], grad.to(out.dtype))
        results.append((out, *grads))
    assert results[0][0].dtype == results[1][0].dtype
    # bf16: the fused path rounds the matmul before adding the bias, the plain one after
    tol = 3e-2 if autocast else 1e-5
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,autocast", [(torch.float64, False), (torch.float32, True)])
def test_linear_with_matmul_bias_grad_equals_f_linear(dtype, autocast):
    """matmul_bias_grad.linear against F.linear: output and the three gradients (the bias's
    by 1^T G), exactly in float64, to bf16 rounding under autocast."""
    x = torch.randn(3, 17, 24, dtype=dtype)
    w = torch.randn(40, 24, dtype=dtype)
    b = torch.randn(40, dtype=dtype)
    grad = torch.randn(3, 17, 40, dtype=dtype)
    results = []
    for fn in (linear, torch.nn.functional.linear):
        leaves = [t.detach().requires_grad_() for t in (x, w, b)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fn(*leaves)
        grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
        results.append((out, *grads))
    for a, e in zip(*results):
        assert a.dtype == e.dtype
        tol = 0 if dtype == torch.float64 else 5e-2  # bf16 sums of 51 rows
        torch.testing.assert_close(a, e, rtol=tol or 1e-12, atol=tol or 1e-12)


def test_fused_only_where_it_applies():
    x = torch.randn(4, 8)
    assert not bg.fused_usable(x, "torch")
    assert not bg.fused_usable(x.double(), "auto")
    if not ON_GPU:  # CPU tensors only under the interpreter, when a test asks for it
        assert not bg.fused_usable(x, "auto")
    with pytest.raises(ValueError, match="does not match"):
        bg.bias_gelu(x, torch.zeros(7), fused=False)


@pytest.mark.slow
@pytest.mark.skipif(READY, reason="the tests above ran in this process")
def test_in_fresh_process():
    """This file's tests, in a new interpreter process (see test_kernel_triton.py)."""
    rerun_in_fresh_process(__file__)
