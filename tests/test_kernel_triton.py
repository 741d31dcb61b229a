"""The fused Triton kernel computes `chunked_attention_torch`'s function, values and gradients.

On a machine without CUDA this runs under Triton's CPU interpreter; with CUDA it runs the
compiled kernels. The oracle is the torch reference in float64 on the very inputs the kernel
sees (rounded to its dtype), so the error measured is the kernel's own. Every case draws fresh
random inputs.

The interpreter must be switched on (TRITON_INTERPRET=1) before triton is first imported: its
own library functions (tl.sum, tl.max) are decorated then. When something imported triton
earlier in this process (Lightning does), these tests skip here and `test_in_fresh_process`
runs this file again in a new process with the interpreter on from the start.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)

import triton.language.standard  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from reformer_lab.kernels import chunked_attention_triton, interpreting, triton_available  # noqa: E402
from reformer_lab.kernels import triton_chunked as tc  # noqa: E402
from reformer_lab.model.attention.chunked import (  # noqa: E402
    MASK_SCORE,
    SELF_SCORE,
    chunked_attention_torch,
)
from tests.interpreter_rerun import rerun_in_fresh_process  # noqa: E402

READY = ON_GPU or isinstance(triton.language.standard.sum, InterpretedFunction)
if READY and not ON_GPU and not isinstance(tc._fwd_kernel, InterpretedFunction):
    tc = importlib.reload(tc)  # imported while the interpreter was off
in_process = pytest.mark.skipif(
    not READY, reason="triton was imported before the interpreter was on: see test_in_fresh_process"
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def _configs(tile: int, step: int) -> tc.KernelConfigs:
    cfg = tc.TileConfig(tile=tile, step=step)
    return tc.KernelConfigs(fwd=cfg, dkdv=cfg, dq=cfg)


def _lsh_like_inputs(G, L, d, dtype, *, valid_frac=None, n_buckets=3):
    """q, k, v (G, L, d); pos: each group's positions sorted by a random bucket, as LSH does;
    sorted buckets (G, L); key_valid (G, L) or None."""
    q, k, v = (torch.randn(G, L, d).to(dtype) for _ in range(3))
    bucket = torch.randint(0, n_buckets, (G, L))  # (G, L)
    pos = (bucket * L + torch.arange(L)).argsort(dim=1)  # (G, L) int64
    buckets = bucket.gather(1, pos)  # (G, L) bucket of each sorted slot
    key_valid = None
    if valid_frac is not None:
        key_valid = torch.rand(G, L) < valid_frac
    return q, k, v, pos, buckets, key_valid


def _relative_error(got, ref) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    assert torch.isfinite(got).all(), "kernel output has NaN/inf"
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _outputs_and_grads(fn, q, k, v, w, u, **kwargs):
    """out, lse and the grads of sum(out * w) + sum(lse * u) w.r.t. q, k, v."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = fn(q, k, v, **kwargs)
    ((out.double() * w).sum() + (lse.double() * u).sum()).backward()
    return [out, lse, q.grad, k.grad, v.grad]


def _check_against_reference(
    G, L, d, C, *, causal, dtype, valid_frac=None, use_buckets=False, configs=None
):
    q, k, v, pos, buckets, key_valid = _lsh_like_inputs(G, L, d, dtype, valid_frac=valid_frac)
    w = torch.randn(G, L, d).to(dtype).double()  # what autograd hands `out` as its gradient
    u = torch.randn(G, L, dtype=torch.float64)
    kwargs = dict(
        scale=d**-0.5, causal=causal, key_valid=key_valid, buckets=buckets if use_buckets else None
    )
    ref = _outputs_and_grads(
        lambda q, k, v, **kw: chunked_attention_torch(q, k, v, pos, C, **kw),
        q.double(),
        k.double(),
        v.double(),
        w,
        u,
        **kwargs,
    )
    on = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    kwargs = {name: on(t) if isinstance(t, torch.Tensor) else t for name, t in kwargs.items()}
    got = _outputs_and_grads(
        lambda q, k, v, **kw: chunked_attention_triton(
            q, k, v, pos.to(DEVICE), C, configs=configs, **kw
        ),
        q.to(DEVICE),
        k.to(DEVICE),
        v.to(DEVICE),
        w.to(DEVICE),
        u.to(DEVICE),
        **kwargs,
    )
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    errors = {
        name: _relative_error(a, b)
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, ref)
    }
    bad = {name: e for name, e in errors.items() if not e < TOLERANCE[dtype]}
    assert not bad, f"relative errors over {TOLERANCE[dtype]}: {bad} (all: {errors})"


@in_process
def test_triton_available():
    assert triton_available()


@in_process
def test_score_constants_match_reference():
    assert (tc.MASK_SCORE, tc.SELF_SCORE) == (MASK_SCORE, SELF_SCORE)


# (G, L, d, C, causal, dtype, valid_frac, use_buckets, (tile, step) or None for the defaults)
CASES = [
    (2, 64, 16, 16, True, torch.float32, None, False, None),
    (2, 128, 32, 32, False, torch.float32, 0.7, False, None),
    (1, 128, 64, 64, True, torch.float32, 0.8, True, None),
    (2, 128, 32, 32, True, torch.bfloat16, 0.8, False, None),
    (1, 96, 16, 16, True, torch.float16, None, True, None),
    (2, 96, 16, 16, True, torch.float32, 0.7, False, (64, 32)),  # tiles span chunks; L % tile != 0
    (2, 96, 16, 16, False, torch.bfloat16, None, False, (16, 64)),  # walked blocks span chunks
    (1, 128, 64, 64, True, torch.float32, 0.8, False, (32, 16)),  # tiles shorter than a chunk
    (1, 512, 16, 256, True, torch.float32, None, False, (64, 64)),  # one tile per quarter chunk
]


@in_process
@pytest.mark.parametrize("G, L, d, C, causal, dtype, valid_frac, use_buckets, tiles", CASES)
def test_matches_reference(G, L, d, C, causal, dtype, valid_frac, use_buckets, tiles):
    configs = _configs(*tiles) if tiles else None
    _check_against_reference(
        G,
        L,
        d,
        C,
        causal=causal,
        dtype=dtype,
        valid_frac=valid_frac,
        use_buckets=use_buckets,
        configs=configs,
    )


@in_process
def test_rows_with_every_key_masked_match_reference():
    """No valid key anywhere: every score is MASK_SCORE, so each row averages v over its 2C
    slots (chunk 0's look-back slots count, with v = 0). An fp32 lse is -1e9 rounded, so the
    backward must not recover P from lse alone."""
    G, L, d, C = 1, 64, 16, 16
    q, k, v, pos, _, _ = _lsh_like_inputs(G, L, d, torch.float32)
    key_valid = torch.zeros(G, L, dtype=torch.bool)
    w, u = torch.randn(G, L, d, dtype=torch.float64), torch.randn(G, L, dtype=torch.float64)
    kwargs = dict(scale=0.25, causal=True, key_valid=key_valid)
    ref = _outputs_and_grads(
        lambda *t, **kw: chunked_attention_torch(*t, pos, C, **kw),
        q.double(),
        k.double(),
        v.double(),
        w,
        u,
        **kwargs,
    )
    kwargs["key_valid"] = key_valid.to(DEVICE)
    got = _outputs_and_grads(
        lambda *t, **kw: chunked_attention_triton(*t, pos.to(DEVICE), C, **kw),
        q.to(DEVICE),
        k.to(DEVICE),
        v.to(DEVICE),
        w.to(DEVICE),
        u.to(DEVICE),
        **kwargs,
    )
    window_mean = torch.cat(
        [
            v[:, :C].sum(1, keepdim=True) / (2 * C),
            (v[:, :-C] + v[:, C:]).reshape(G, -1, C, d).sum(2) / (2 * C),
        ],
        1,
    )
    assert torch.allclose(
        got[0].cpu().reshape(G, -1, C, d),
        window_mean[:, :, None, :].expand(-1, -1, C, -1),
        atol=1e-5,
    )
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, ref):
        if name in ("dq", "dk"):  # constant scores: no gradient reaches q or k
            assert a.abs().max() == 0, name
        else:
            assert _relative_error(a, b) < 1e-5, name


@in_process
@pytest.mark.parametrize("tiles", [None, (64, 32), (16, 64)])
def test_every_output_element_written(tiles):
    """Poison the output buffers with NaN; the kernels must overwrite every element."""
    G, L, d, C = 2, 80, 16, 16  # L % 64 != 0: a tile hangs over the end
    configs = _configs(*tiles) if tiles else tc.default_configs(C, d, torch.float32)
    q, k, v, pos, buckets, key_valid = (
        t.to(DEVICE) for t in _lsh_like_inputs(G, L, d, torch.float32, valid_frac=0.8)
    )
    pos, buckets = pos.int(), buckets.int()
    key_valid = key_valid.view(torch.uint8)
    nan = lambda *shape: torch.full(shape, float("nan"), device=DEVICE)  # noqa: E731
    options = dict(chunk_size=C, scale=0.25, causal=True, interpret=interpreting())
    out, lse, stats = tc.launch_forward(
        q, k, v, pos, key_valid, buckets, config=configs.fwd, stats=True,
        out=nan(G, L, d), lse=nan(G, L), row_stats=(nan(G, L), nan(G, L)), **options,
    )  # fmt: skip
    for t in (out, lse, *stats):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(stats[0] + stats[1], lse)
    grads = tc.launch_backward(
        q, k, v, pos, key_valid, buckets, out, stats, torch.randn_like(out), torch.randn_like(lse),
        configs=configs, grads=(nan(G, L, d), nan(G, L, d), nan(G, L, d)), **options,
    )  # fmt: skip
    for t in grads:
        assert torch.isfinite(t).all()


@in_process
def test_gradient_through_only_one_output():
    """Loss on lse alone (no dout) and on out alone (no dlse) both match the reference."""
    G, L, d, C = 1, 64, 16, 16
    q, k, v, pos, _, _ = _lsh_like_inputs(G, L, d, torch.float32)
    for pick in (0, 1):
        grads = []
        for fn, dev, dtype in (
            (chunked_attention_torch, "cpu", torch.float64),
            (chunked_attention_triton, DEVICE, torch.float32),
        ):
            leaves = [t.detach().to(dev, dtype).clone().requires_grad_() for t in (q, k, v)]
            fn(*leaves, pos.to(dev), C, scale=0.25, causal=True)[pick].sum().backward()
            grads.append([t.grad for t in leaves])
        for ref, got in zip(*grads):
            if ref is None:  # v does not reach lse
                assert pick == 1 and torch.equal(got, torch.zeros_like(got))
            else:
                assert _relative_error(got, ref) < 1e-4


@in_process
def test_forward_without_grad_matches_forward_with_grad():
    q, k, v, pos, _, key_valid = (
        t.to(DEVICE) for t in _lsh_like_inputs(2, 64, 16, torch.bfloat16, valid_frac=0.8)
    )
    kwargs = dict(scale=0.25, causal=True, key_valid=key_valid)
    with torch.no_grad():
        plain = chunked_attention_triton(q, k, v, pos, 16, **kwargs)
    tracked = chunked_attention_triton(q.requires_grad_(), k, v, pos, 16, **kwargs)
    for a, b in zip(plain, tracked):
        assert torch.equal(a, b.detach())


@in_process
def test_backward_is_deterministic():
    """No atomics: two backward passes on the same inputs agree bit for bit."""
    q, k, v, pos, _, _ = _lsh_like_inputs(2, 64, 16, torch.bfloat16)
    q, k, v, pos = (t.to(DEVICE) for t in (q, k, v, pos))
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse = chunked_attention_triton(*leaves, pos, 16, scale=0.25, causal=True)
        (out.float().square().sum() + lse.sum()).backward()
        runs.append([t.grad for t in leaves])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(READY, reason="the tests above ran in this process")
def test_in_fresh_process():
    """This file's tests, in a new interpreter process (see the module docstring)."""
    rerun_in_fresh_process(__file__)
