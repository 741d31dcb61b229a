"""The Triton backend's front door: importable without triton, bad input refused before any work.

These tests need no triton: validation runs before the kernels are imported.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

import reformer_lab
from reformer_lab.kernels import chunked_attention_triton


def _inputs(G=2, L=64, d=16, dtype=torch.float32):
    q, k, v = (torch.randn(G, L, d, dtype=dtype) for _ in range(3))
    pos = torch.stack([torch.randperm(L) for _ in range(G)])  # (G, L)
    return q, k, v, pos


def _call(q, k, v, pos, C=16, **kwargs):
    return chunked_attention_triton(q, k, v, pos, C, scale=0.25, causal=True, **kwargs)


@pytest.fixture
def interpret(monkeypatch):
    """Pretend to be under the interpreter, so CPU tensors pass the device check."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_import_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    for name in (
        "reformer_lab.kernels",
        "reformer_lab.kernels.api",
        "reformer_lab.kernels.triton_chunked",
        "reformer_lab.kernels.rounds",
        "reformer_lab.kernels.triton_rounds",
    ):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(reformer_lab, "kernels", None, raising=False)
    kernels = importlib.import_module("reformer_lab.kernels")
    assert kernels.triton_available() is False
    q, k, v, pos = _inputs()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ImportError):
        kernels.chunked_attention_triton(q, k, v, pos, 16, scale=0.25, causal=True)


def test_bias_refused(interpret):
    q, k, v, pos = _inputs()
    with pytest.raises(ValueError, match="bias"):
        _call(q, k, v, pos, bias=torch.zeros(2, 4, 16, 32))


@pytest.mark.parametrize("d", [8, 48, 256])
def test_head_dim_outside_supported_set_refused(interpret, d):
    with pytest.raises(ValueError, match=f"head dim {d}"):
        _call(*_inputs(d=d))


@pytest.mark.parametrize("C", [8, 24, 512])
def test_chunk_size_outside_supported_set_refused(interpret, C):
    q, k, v, pos = _inputs(L=1024)
    with pytest.raises(ValueError, match=f"chunk_size {C}"):
        _call(q, k, v, pos, C=C)


def test_length_not_multiple_of_chunk_refused(interpret):
    q, k, v, pos = _inputs(L=40)
    with pytest.raises(ValueError, match="multiple of chunk_size 16"):
        _call(q, k, v, pos)


def test_mixed_dtypes_refused(interpret):
    q, k, v, pos = _inputs()
    with pytest.raises(ValueError, match="share one dtype"):
        _call(q, k, v.double(), pos)


def test_bad_side_inputs_refused(interpret):
    q, k, v, pos = _inputs()
    with pytest.raises(ValueError, match="pos must be an integer tensor"):
        _call(q, k, v, pos.float())
    with pytest.raises(ValueError, match="key_valid must be a bool tensor"):
        _call(q, k, v, pos, key_valid=torch.ones(2, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="buckets must be an integer tensor"):
        _call(q, k, v, pos, buckets=torch.zeros(2, 32, dtype=torch.int64))


def test_cpu_tensors_refused_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        _call(*_inputs())


def test_too_many_groups_refused(interpret):
    q = torch.randn(1, 16, 16).expand(65536, 16, 16)  # (G, L, d) without the memory
    pos = torch.arange(16).expand(65536, 16)
    with pytest.raises(ValueError, match="65535"):
        _call(q, q, q, pos)


# --------------------------------------------------------------------------- fused LSH rounds


def _round_inputs(B=1, H=2, L=64, d=16, R=2):
    q = torch.randn(B, L, H, d).transpose(1, 2)  # (B, H, L, d) as the projections give it
    order = torch.stack([torch.randperm(L) for _ in range(B * H * R)]).view(B, H, R, L)
    return q, order


def _rounds_call(q, order, C=16, **kwargs):
    from reformer_lab.kernels import lsh_rounds_forward

    return lsh_rounds_forward(q, q, q, order, C, scale=0.25, causal=True, **kwargs)


def test_rounds_bad_input_refused_before_triton_is_needed(monkeypatch, interpret):
    monkeypatch.setitem(sys.modules, "triton", None)
    _, order = _round_inputs()
    with pytest.raises(ValueError, match="head dim 48"):
        _rounds_call(torch.randn(1, 2, 64, 48), order)


def test_rounds_bad_shapes_refused(interpret):
    q, order = _round_inputs()
    with pytest.raises(ValueError, match=r"order must be \(B, H, R, L\)"):
        _rounds_call(q, order[:, :, :, :32])
    with pytest.raises(ValueError, match="order must be int32 or int64"):
        _rounds_call(q, order.float())
    with pytest.raises(ValueError, match="chunk_size 24"):
        _rounds_call(q, order, C=24)
    with pytest.raises(ValueError, match="multiple of chunk_size 16"):
        q40, order40 = _round_inputs(L=40)
        _rounds_call(q40, order40)
    with pytest.raises(ValueError, match="share one dtype"):
        from reformer_lab.kernels import lsh_rounds_forward

        lsh_rounds_forward(q, q, q.double(), order, 16, scale=0.25, causal=True)


def test_rounds_bad_side_inputs_refused(interpret):
    q, order = _round_inputs()
    with pytest.raises(ValueError, match="key_valid must be a bool tensor of shape"):
        _rounds_call(q, order, key_valid=torch.ones(1, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="buckets must be an int32/int64 tensor"):
        _rounds_call(q, order, buckets=torch.zeros(1, 2, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="buckets must be an int32/int64 tensor"):
        _rounds_call(q, order, buckets=torch.zeros_like(order, dtype=torch.bool))


def test_rounds_cpu_tensors_refused_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="need CUDA tensors"):
        _rounds_call(*_round_inputs())


def test_rounds_backward_refuses_mismatched_saved_tensors(interpret):
    from reformer_lab.kernels import lsh_rounds_backward

    q, order = _round_inputs()
    lse = torch.zeros(1, 2, 2, 64)
    common = dict(scale=0.25, causal=True, stats=(lse, lse))
    with pytest.raises(ValueError, match="out and dout must be"):
        lsh_rounds_backward(q, q, q, order, 16, out=q[:, :1], lse=lse, dout=q, **common)
    with pytest.raises(ValueError, match="lse and stats must be"):
        lsh_rounds_backward(q, q, q, order, 16, out=q, lse=lse[:, :, :1], dout=q, **common)
