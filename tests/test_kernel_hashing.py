"""The fused hashing kernel gives the buckets of `hash_vectors` (the torch path).

The two form x R in fp32 in different orders of summation, so a bucket may differ only where
two entries of [xR; -xR] are within rounding of each other; every other bucket must be equal.
Fresh random inputs per case; one, two and three factors, odd half-widths, q in the (B, L, H,
d) layout the projections give, padding. Runs on CUDA when there is one, else under Triton's
CPU interpreter (see test_kernel_triton.py for the fresh-process fallback used here).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.kernel_interpreter import DEVICE, ON_GPU, READY, in_process, interpreted

# isort: split

from reformer_lab.kernels import triton_hashing as th
from reformer_lab.model.attention import hashing
from reformer_lab.model.attention.hashing import hash_buckets, hash_vectors
from tests.interpreter_rerun import rerun_in_fresh_process

th = interpreted(th, "_hash_kernel")


def _near_tie(x: torch.Tensor, rotations, tol: float = 1e-4) -> torch.Tensor:
    """(B, H, R, L) True where some factor's two largest entries of [xR; -xR] (fp64) are
    within tol of each other, relative to the largest: there rounding may pick either."""
    tie = None
    for rot in rotations:
        rotated = torch.einsum("bhld,hrdk->bhrlk", x.double(), rot.double())
        both = torch.cat([rotated, -rotated], -1)
        top2 = both.topk(2, dim=-1).values
        near = (top2[..., 0] - top2[..., 1]) <= tol * top2[..., 0].abs().clamp_min(1e-30)
        tie = near if tie is None else tie | near
    return tie


@in_process
@pytest.mark.parametrize(
    "B,H,L,d,factors,dtype,rot_dtype,padded",
    [
        (1, 2, 100, 16, (8,), torch.float32, torch.float32, False),
        (2, 3, 70, 64, (46, 46), torch.bfloat16, torch.float32, True),  # odd halves
        (2, 3, 70, 64, (46, 46), torch.bfloat16, torch.bfloat16, True),  # the model's: bf16 MMA
        (1, 2, 130, 16, (64, 64, 34), torch.float32, torch.bfloat16, True),  # three factors
        (1, 4, 64, 32, (6,), torch.bfloat16, torch.bfloat16, False),  # 3 rotated columns of 16
    ],
)
def test_fused_buckets_equal_torch_path(B, H, L, d, factors, dtype, rot_dtype, padded, monkeypatch):
    monkeypatch.setattr(hashing, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    R = 3
    x = torch.randn(B, L, H, d, device=DEVICE).to(dtype).transpose(1, 2)  # (B, H, L, d) view
    rotations = [torch.randn(H, R, d, f // 2, device=DEVICE).to(rot_dtype) for f in factors]
    key_valid = torch.rand(B, L, device=DEVICE) < 0.8 if padded else None
    assert hashing.fused_hash_usable(x, factors, "auto")
    got = hash_buckets(x, rotations, factors, key_valid, backend="triton")
    monkeypatch.setattr(hashing, "FUSED_ON_CPU_UNDER_INTERPRETER", False)
    ref = hash_buckets(x, rotations, factors, key_valid, backend="torch")
    assert got.dtype == ref.dtype == torch.int32 and got.shape == (B, H, R, L)
    free = ~_near_tie(x.float(), rotations)
    if key_valid is not None:
        assert (got[~key_valid[:, None, None, :].expand_as(got)] == math.prod(factors)).all()
        free |= ~key_valid[:, None, None, :]
    assert free.float().mean() > 0.9  # the comparison covers almost every bucket
    assert torch.equal(got[free], ref[free])
    assert got.min() >= 0 and got.max() <= math.prod(factors)


@in_process
def test_hash_vectors_uses_fp32_under_autocast():
    """bf16 rotated vectors would tie often; the torch path forms them in fp32 regardless."""
    x = torch.randn(1, 2, 40, 16)
    rot = [torch.randn(2, 2, 16, 32)]
    plain = hash_vectors(x, rot, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(hash_vectors(x, rot, (64,)), plain)


def test_fused_only_where_it_applies():
    x = torch.randn(1, 2, 8, 16)
    assert not hashing.fused_hash_usable(x, (8,), "torch")
    assert not hashing.fused_hash_usable(torch.randn(1, 2, 8, 24), (8,), "auto")  # d = 24
    assert not th.fused_hash_supported(x, (8, 8, 8, 8))  # four factors
    if not ON_GPU:
        assert not hashing.fused_hash_usable(x, (8,), "auto")  # CPU, interpreter not asked for


@pytest.mark.slow
@pytest.mark.skipif(READY, reason="the tests above ran in this process")
def test_in_fresh_process():
    """This file's tests, in a new interpreter process (see test_kernel_triton.py)."""
    rerun_in_fresh_process(__file__)
