"""summed_cross_entropy: F.cross_entropy's value and gradient (reduction "sum", ignore_index)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reformer_lab.model.cross_entropy import summed_cross_entropy


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 1e-5)]
)
def test_value_and_gradient_equal_f_cross_entropy(dtype, tol, monkeypatch):
    from reformer_lab.model import row_blocks

    monkeypatch.setattr(row_blocks, "BLOCK_ELEMENTS", 17 * 8)  # blocks of 8 rows, one of 2
    torch.manual_seed(0)
    logits = (3 * torch.randn(50, 17)).to(dtype)
    targets = torch.randint(0, 17, (50,))
    targets[::7] = -100  # ignored rows: no loss, no gradient
    weight = torch.randn(())  # an upstream gradient other than 1

    got_in = logits.clone().requires_grad_()
    got = summed_cross_entropy(got_in, targets, -100)
    (got * weight).backward()
    ref_in = logits.clone().requires_grad_()
    ref = F.cross_entropy(ref_in.double(), targets, ignore_index=-100, reduction="sum")
    (ref * weight).backward()

    assert got.dtype == torch.promote_types(dtype, torch.float32)
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)
    assert got_in.grad.dtype == dtype
    assert torch.all(got_in.grad[::7] == 0)
    grad_tol = 1e-2 if dtype == torch.bfloat16 else tol  # the gradient comes back in bf16
    torch.testing.assert_close(
        got_in.grad.double(), ref_in.grad.double(), rtol=grad_tol, atol=grad_tol
    )


def test_other_ignore_index_and_all_ignored():
    logits = torch.randn(4, 5, requires_grad=True)
    targets = torch.tensor([1, 7, 7, 0])
    ref = F.cross_entropy(logits, targets.where(targets != 7, -100), reduction="sum")
    torch.testing.assert_close(summed_cross_entropy(logits, targets, 7), ref)
    loss = summed_cross_entropy(logits, torch.full((4,), 7), 7)
    loss.backward()
    assert loss.item() == 0 and torch.all(logits.grad == 0)


def test_owned_logits_take_their_own_gradient():
    """logits_owned: the same gradient, written into the logits' own memory."""
    torch.manual_seed(3)
    logits = torch.randn(6, 5, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.tensor([0, 4, -100, 2, 1, 3])
    (want,) = torch.autograd.grad(summed_cross_entropy(logits * 1, targets), [logits])
    owned = logits * 1  # a non-leaf, as the head's output is
    captured = {}
    owned.register_hook(lambda g: captured.setdefault("grad", g))
    summed_cross_entropy(owned, targets, logits_owned=True).backward()
    assert captured["grad"].data_ptr() == owned.data_ptr()
    torch.testing.assert_close(logits.grad, want)
