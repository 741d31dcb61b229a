"""The fused LayerNorm kernels compute what `layer_norm_to`'s torch path computes.

Oracle: the torch path (row blocks, fp32) on the very inputs the kernels get, and nn.LayerNorm
in float64. Every case draws fresh inputs; the output is poisoned first, so an unwritten row
fails. Runs on CUDA when there is one, else under Triton's CPU interpreter (see
test_kernel_triton.py for the fresh-process fallback used here).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.kernel_interpreter import DEVICE, ON_GPU, READY, in_process, interpreted

# isort: split

from reformer_lab.kernels import triton_layer_norm as tln
from reformer_lab.model import layer_norm
from reformer_lab.model.layer_norm import layer_norm_to
from tests.interpreter_rerun import rerun_in_fresh_process

tln = interpreted(tln, "_ln_fwd_kernel")


def _norm(d: int) -> nn.LayerNorm:
    norm = nn.LayerNorm(d).to(DEVICE)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


def _both_paths(x, norm, dtype, grad, make_into=None):
    """(out, dx or into after the backward, dw, db) on the fused and on the torch path;
    make_into() gives the buffer the input gradient is added into (the same values twice)."""
    results = {}
    for fused in (True, False):
        leaf = x.detach().requires_grad_()
        into = None if make_into is None else make_into()
        backend = "triton" if fused else "torch"
        assert (
            layer_norm.fused_usable((leaf,), dtype, None if into is None else (into,), backend)
            == fused
        )
        out = layer_norm_to(leaf, norm, dtype, grad_into=into, backend=backend)
        grads = torch.autograd.grad(out, [leaf, norm.weight, norm.bias], grad, allow_unused=True)
        dx = grads[0] if into is None else into
        results[fused] = (out, dx, grads[1], grads[2])
    return results[True], results[False]


@in_process
@pytest.mark.parametrize(
    "B,L,d,x_dtype,dtype",
    [
        (1, 37, 64, torch.float32, torch.bfloat16),  # the stream into the matmuls' dtype
        (2, 19, 48, torch.float32, torch.float32),  # d not a power of two
        (1, 300, 512, torch.float32, torch.bfloat16),  # base's width, several programs
        (2, 9, 16, torch.bfloat16, torch.bfloat16),
    ],
)
def test_fused_equals_torch_path(B, L, d, x_dtype, dtype, monkeypatch):
    monkeypatch.setattr(layer_norm, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    norm = _norm(d)
    x = (2 + 3 * torch.randn(B, L, d, device=DEVICE)).to(x_dtype)  # a mean far from 0
    grad = torch.randn(B, L, d, device=DEVICE).to(dtype)
    fused, ref = _both_paths(x, norm, dtype, grad)
    assert fused[0].dtype == dtype and fused[1].dtype == x_dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, a, b in zip(("out", "dx", "dw", "db"), fused, ref):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=name)
    exact = torch.nn.functional.layer_norm(
        x.double(), (d,), norm.weight.double(), norm.bias.double()
    )
    torch.testing.assert_close(fused[0].double(), exact, rtol=tol, atol=tol)


@in_process
def test_strided_rows_and_grad_into(monkeypatch):
    """A sequence chunk of a (B, L, d) stream with B > 1 (rows not evenly spaced) read in
    place, and the input gradient added into a strided half of a wider buffer."""
    monkeypatch.setattr(layer_norm, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    norm = _norm(32)
    stream = torch.randn(3, 20, 32, device=DEVICE)
    x = stream[:, 5:13]  # (3, 8, 32), batch stride 640, position stride 32
    assert not x.is_contiguous()
    wide = torch.randn(3, 8, 64, device=DEVICE)

    def make_into():
        into = wide.clone()[..., 32:]  # position stride 64
        assert into.stride() == (512, 64, 1)
        return into

    grad = torch.randn(3, 8, 32, device=DEVICE).to(torch.bfloat16)
    fused, ref = _both_paths(x, norm, torch.bfloat16, grad, make_into)
    assert not torch.equal(fused[1], wide[..., 32:])  # the gradient went in
    for name, a, b in zip(("out", "into", "dw", "db"), fused, ref):
        tol = 1e-2 if name == "out" else 1e-4  # out: bf16, one ulp apart where rounding ties
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=name)


@in_process
def test_every_row_written():
    d = 48
    norm = _norm(d)
    x = torch.randn(2, 33, d, device=DEVICE)
    y, mean, rstd = tln.layer_norm_forward((x,), norm.weight, norm.bias, 1e-5, torch.float32)
    assert torch.isfinite(y).all() and torch.isfinite(mean).all() and torch.isfinite(rstd).all()
    grad = torch.randn_like(x)
    (dx,), dw, db = tln.layer_norm_backward((x,), norm.weight, grad, mean, rstd, None)
    assert torch.isfinite(dx).all()
    ref = torch.autograd.grad(
        torch.nn.functional.layer_norm(x.requires_grad_(), (d,), norm.weight, norm.bias),
        [x, norm.weight, norm.bias], grad,
    )  # fmt: skip
    for a, b in zip((dx, dw, db), ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@in_process
@pytest.mark.parametrize("fused", [True, False])
def test_pair_equals_layer_norm_of_the_concatenation(fused, monkeypatch):
    """x = (y1, y2) stands for [y1; y2] (the final norm of the two streams): the value of the
    concatenation's LayerNorm, each part's gradient added into its own strided buffer."""
    monkeypatch.setattr(layer_norm, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    B, L, d = 2, 11, 24
    norm = _norm(2 * d)
    stream = torch.randn(B, L + 3, d, device=DEVICE) + 1
    y1, y2 = stream[:, 3:], torch.randn(B, L, d, device=DEVICE)  # y1: a strided chunk
    wide = torch.randn(B, L, 2 * d, device=DEVICE)
    into = (wide[..., :d].clone(), wide[..., d:].clone())
    before = tuple(t.clone() for t in into)
    grad = torch.randn(B, L, 2 * d, device=DEVICE).to(torch.bfloat16)
    backend = "triton" if fused else "torch"
    assert layer_norm.fused_usable((y1, y2), torch.bfloat16, into, backend) == fused
    out = layer_norm_to((y1, y2), norm, torch.bfloat16, grad_into=into, backend=backend)
    dw, db = torch.autograd.grad(out, [norm.weight, norm.bias], grad)
    x = torch.cat([y1, y2], -1).double().requires_grad_()
    ref = torch.nn.functional.layer_norm(x, (2 * d,), norm.weight.double(), norm.bias.double())
    ref_grads = torch.autograd.grad(ref, [x, norm.weight, norm.bias], grad.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)
    for got, was, part in zip(into, before, ref_grads[0].split(d, -1)):
        torch.testing.assert_close(got.double() - was.double(), part, rtol=1e-4, atol=1e-4)
    for got, want in zip((dw, db), ref_grads[1:]):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-4)


def test_fused_only_where_it_applies():
    x = torch.randn(1, 4, 8)
    assert not layer_norm.fused_usable((x,), torch.float32, None, "torch")
    assert not layer_norm.fused_usable((x.double(),), torch.float64, None, "auto")
    assert not layer_norm.fused_usable((x[0],), torch.float32, None, "auto")  # not (B, L, d)
    assert not layer_norm.fused_usable((x.transpose(1, 2),), torch.float32, None, "auto")
    assert not layer_norm.fused_usable((x, x[:, :2]), torch.float32, None, "auto")  # unequal
    if not ON_GPU:  # CPU tensors only under the interpreter, when a test asks for it
        assert not layer_norm.fused_usable((x,), torch.float32, None, "auto")


@pytest.mark.slow
@pytest.mark.skipif(READY, reason="the tests above ran in this process")
def test_in_fresh_process():
    """This file's tests, in a new interpreter process (see test_kernel_triton.py)."""
    rerun_in_fresh_process(__file__)
