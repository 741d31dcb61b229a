"""The fused LSH round kernels compute what lsh_rounds.py's torch path computes.

Oracle: `merge_rounds` (forward: merged output and every round's lse) and plain autograd
through it (backward), on the torch backend in float32 on the very inputs the kernels get.
float32, not float64: in rows whose every key is masked, lse ~ -1e9 rounds alike in both
fp32 paths, while fp64 keeps log(2C) (both are the torch path's documented behaviour).
Then `_RoundsFunction` end to end, fused path against torch path. Every case draws fresh inputs.

Runs on CUDA when there is one, else under Triton's CPU interpreter, which must be on before
triton is first imported; see test_kernel_triton.py for the fresh-process fallback used here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.kernel_interpreter import DEVICE, ON_GPU, READY, in_process, interpreted

# isort: split

from reformer_lab.kernels import interpreting, lsh_rounds_backward, lsh_rounds_forward
from reformer_lab.kernels import triton_chunked as tc
from reformer_lab.kernels import triton_round_backward as trb
from reformer_lab.kernels import triton_rounds as tr
from reformer_lab.kernels.rounds import default_round_configs
from reformer_lab.model.attention import lsh_rounds
from reformer_lab.model.attention.lsh_rounds import HashRounds, merge_rounds
from tests.interpreter_rerun import rerun_in_fresh_process

tc = interpreted(tc, "_fwd_kernel")
tr = interpreted(tr, "_round_fwd_kernel")
trb = interpreted(trb, "_round_bwd_kernel")
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1e-2}


def _heads(B, H, L, d, dtype, layout, width=1):
    """(B, H, L, d) in `layout`: 'bhld' contiguous, or 'blhd' (B, L, H, d) memory as the
    projections give it; width > 1 takes the first d of width * d columns (odd strides)."""
    if layout == "bhld":
        return torch.randn(B, H, L, d).to(dtype)
    return torch.randn(B, L, H, width * d).to(dtype)[..., :d].transpose(1, 2)


def _rounds(B, H, L, C, R, *, causal, valid_frac, use_buckets, n_buckets=4):
    """Random hash rounds as lsh.py builds them: order sorts positions by (bucket, position)."""
    buckets = torch.randint(0, n_buckets, (B, H, R, L))
    order = torch.sort(buckets.to(torch.int32), dim=-1, stable=True).indices  # (B, H, R, L)
    key_valid = None if valid_frac is None else torch.rand(B, L) < valid_frac
    return HashRounds(
        order=order,
        key_valid=key_valid,
        buckets=buckets if use_buckets else None,
        chunk_size=C,
        causal=causal,
        dedup=False,
        backend="torch",
    )


def _relative_error(got, ref) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    assert torch.isfinite(got).all(), "kernel output has NaN/inf"
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _kernel_arguments(rounds: HashRounds, scale: float) -> tuple:
    """order and the keyword arguments of lsh_rounds_forward / _backward, on DEVICE."""
    move = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    options = dict(
        chunk_size=rounds.chunk_size,
        scale=scale,
        causal=rounds.causal,
        key_valid=move(rounds.key_valid),
        buckets=move(rounds.buckets),
    )
    return move(rounds.order), options


# (B, H, L, C, d, R, causal, valid_frac, buckets, layout, dtype, (tile, step) or None)
CASES = [
    (1, 2, 64, 16, 16, 3, True, 0.7, True, "blhd", torch.float32, None),
    (2, 1, 64, 16, 32, 2, False, None, False, "bhld", torch.float32, None),
    (1, 2, 96, 32, 16, 1, True, 0.8, False, "bhld", torch.float32, None),  # one round
    (1, 1, 128, 32, 16, 2, True, 0.8, True, "blhd", torch.bfloat16, None),
    (2, 1, 48, 16, 16, 2, False, 0.7, True, "blhd", torch.float32, (64, 32)),  # tiles overhang
]


@in_process
@pytest.mark.parametrize(
    "B, H, L, C, d, R, causal, valid_frac, buckets, layout, dtype, tiles", CASES
)
def test_forward_and_backward_match_torch_rounds(
    B, H, L, C, d, R, causal, valid_frac, buckets, layout, dtype, tiles
):
    rounds = _rounds(B, H, L, C, R, causal=causal, valid_frac=valid_frac, use_buckets=buckets)
    q, k, v = (_heads(B, H, L, d, dtype, layout, width=w) for w in (1, 1, 2))
    dout = _heads(B, H, L, d, dtype, "bhld" if layout == "blhd" else "blhd")

    # Oracle: the torch path in fp32, autograd straight through merge_rounds.
    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = merge_rounds(*leaves, rounds)
    ref_out.backward(dout.float())

    order, options = _kernel_arguments(rounds, d**-0.5)
    if layout == "bhld":
        order = order.to(torch.int32)  # lsh.py's plan keeps int32 orders; both are taken
    configs = None
    if tiles:
        cfg = tc.TileConfig(tile=tiles[0], step=tiles[1])
        configs = tc.KernelConfigs(fwd=cfg, dkdv=cfg, dq=cfg)
    inputs = [t.to(DEVICE) for t in (q, k, v)]
    out, lse, stats = lsh_rounds_forward(*inputs, order, stats=True, configs=configs, **options)
    grads = lsh_rounds_backward(
        *inputs, order, out=out, lse=lse, stats=stats, dout=dout.to(DEVICE), configs=configs,
        **options,
    )  # fmt: skip

    assert out.dtype == dtype and out.stride() == torch.empty_like(v).stride()
    assert lse.shape == (B, H, R, L) and lse.dtype == torch.float32
    torch.testing.assert_close(stats[0] + stats[1], lse, rtol=0, atol=0)  # lse = max + log sum
    errors = {
        "out": _relative_error(out, ref_out),
        "lse": _relative_error(lse, ref_lse),
        **{
            name: _relative_error(g, ref.grad)
            for name, g, ref in zip(("dq", "dk", "dv"), grads, leaves)
        },
    }
    bad = {name: e for name, e in errors.items() if not e < TOLERANCE[dtype]}
    assert not bad, f"relative errors over {TOLERANCE[dtype]}: {bad} (all: {errors})"
    for g, x in zip(grads, inputs):  # gradients come back in the inputs' dtype and layout
        assert g.dtype == x.dtype and g.stride() == torch.empty_like(x).stride()


SHARED_QK_CASES = [  # (B, H, L, C, d, R, causal, valid_frac, buckets, dtype, tiny_row)
    (1, 2, 64, 16, 16, 3, True, 0.7, True, torch.float32, False),
    (2, 1, 64, 16, 32, 2, False, None, False, torch.float32, True),  # |x| < eps: clamped
    (1, 2, 96, 32, 16, 1, True, 0.8, False, torch.float32, False),  # one round
    (1, 2, 128, 32, 64, 2, True, 0.8, True, torch.bfloat16, False),
]
# The one-launch backward (`triton_round_backward`), forced at several spans: runs that end
# past the head's last chunk (5 chunks in runs of 2 or 4; 3 in runs of 2), one chunk a run,
# and a head in a single run.
ONE_LAUNCH_CASES = [
    (*SHARED_QK_CASES[0][:-1], False, 2),  # L = 4 chunks: runs of 2
    (*SHARED_QK_CASES[1], 3),  # 4 chunks in runs of 3: the second run overhangs
    (*SHARED_QK_CASES[2], 2),  # 3 chunks, R = 1: the gradients written directly
    (*SHARED_QK_CASES[3], 4),  # bf16, 4 chunks in one run
    (1, 1, 80, 16, 16, 2, True, None, False, torch.bfloat16, False, 1),  # 5 chunks, 1 a run
    (2, 1, 80, 16, 16, 3, False, 0.6, True, torch.float32, False, 4),  # 5 in runs of 4
]


@in_process
@pytest.mark.parametrize(
    "B, H, L, C, d, R, causal, valid_frac, buckets, dtype, tiny_row, span",
    [(*case, None) for case in SHARED_QK_CASES] + ONE_LAUNCH_CASES,
)
def test_shared_qk_keys_normalised_in_the_kernels(
    monkeypatch, B, H, L, C, d, R, causal, valid_frac, buckets, dtype, tiny_row, span
):
    """k = None: the kernels form the keys q / max(|q|, 1e-6) themselves and fold the keys'
    gradient into dq. Oracle: normalize_keys(q) in fp32, autograd through merge_rounds.
    span None: the dk/dv and dq launches; else the one-launch backward, `span` chunks a run."""
    from reformer_lab.model.attention.chunked import normalize_keys

    rounds = _rounds(B, H, L, C, R, causal=causal, valid_frac=valid_frac, use_buckets=buckets)
    q, v = (_heads(B, H, L, d, dtype, "blhd", width=w) for w in (1, 2))
    if tiny_row:
        q[0, 0, 5] = 1e-9  # below the normalisation's eps: k = q / eps, dq gets dk / eps
    dout = _heads(B, H, L, d, dtype, "bhld")
    q_ref, v_ref = (t.float().requires_grad_() for t in (q, v))
    ref_out, _ = merge_rounds(q_ref, normalize_keys(q_ref), v_ref, rounds)
    ref_out.backward(dout.float())

    order, options = _kernel_arguments(rounds, d**-0.5)
    q, v = q.to(DEVICE), v.to(DEVICE)
    default = default_round_configs(C, d, dtype)
    one_launch = None if span is None else tc.RunConfig(span=span)
    monkeypatch.setattr(trb, "MIN_PROGRAMS", 1)  # runs of `span` chunks, however few chunks
    configs = tc.KernelConfigs(default.fwd, default.dkdv, default.dq, one_launch)
    out, lse, stats = lsh_rounds_forward(q, None, v, order, stats=True, **options)
    launches = _count_launches(
        lambda: lsh_rounds_backward(
            q, None, v, order, out=out, lse=lse, stats=stats, dout=dout.to(DEVICE),
            configs=configs, **options,
        )
    )  # fmt: skip
    dq, dk, dv = launches.pop("result")
    assert launches == (
        {"_round_bwd_kernel": R} if span else {"_round_dkdv_kernel": R, "_round_dq_kernel": R}
    )
    assert dk is None and dq.stride() == q.stride() and dq.dtype == dtype
    errors = {
        "out": _relative_error(out, ref_out),
        "dq": _relative_error(dq, q_ref.grad),
        "dv": _relative_error(dv, v_ref.grad),
    }
    if tiny_row:
        errors["dq tiny row"] = _relative_error(dq[0, 0, 5], q_ref.grad[0, 0, 5])
    bad = {name: e for name, e in errors.items() if not e < TOLERANCE[dtype]}
    assert not bad, f"relative errors over {TOLERANCE[dtype]}: {bad} (all: {errors})"


def test_one_launch_runs_shorten_to_keep_the_gpu_busy():
    """Runs of `span` chunks halve until a launch has MIN_PROGRAMS of them (one chunk at least)."""
    assert trb.MIN_PROGRAMS == 4096
    tiny = 16  # chunk of tiny's rounds: 64K positions are 4096 chunks, 1M 65536
    assert trb.run_span(8, (1 << 20) // tiny) == 8
    assert trb.run_span(8, (1 << 18) // tiny) == 4
    assert trb.run_span(8, (1 << 16) // tiny) == 1
    assert trb.run_span(8, 4 * (1 << 16) // tiny) == 4  # four heads in one launch
    assert trb.run_span(1, 7) == 1 and trb.run_span(4, 0) == 1


def _count_launches(call) -> dict:
    """Runs call(), counting the launches of each round-backward kernel; 'result': its value."""
    counts = {}
    kernels = [(tr, "_round_dkdv_kernel"), (tr, "_round_dq_kernel"), (trb, "_round_bwd_kernel")]
    originals = [getattr(module, name) for module, name in kernels]

    class Counting:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            counts[self.name] = counts.get(self.name, 0) + 1
            return self.kernel[grid]

    try:
        for (module, name), kernel in zip(kernels, originals):
            setattr(module, name, Counting(name, kernel))
        counts["result"] = call()
    finally:
        for (module, name), kernel in zip(kernels, originals):
            setattr(module, name, kernel)
    return counts


@in_process
def test_every_position_written_by_each_round():
    """NaN-poisoned accumulators, outputs and statistics: round 0 must write every position
    (later rounds read them back), the last round every output element."""
    B, H, L, C, d, R = 1, 2, 48, 16, 16, 2
    rounds = _rounds(B, H, L, C, R, causal=True, valid_frac=0.8, use_buckets=True)
    q, k, v = (_heads(B, H, L, d, torch.float32, "blhd").to(DEVICE) for _ in range(3))
    order, valid = rounds.order.to(DEVICE), rounds.key_valid.to(DEVICE).view(torch.uint8)
    buckets = rounds.buckets.to(DEVICE)
    nan = lambda *shape: torch.full(shape, float("nan"), device=DEVICE)  # noqa: E731
    configs = tc.KernelConfigs(*[tc.TileConfig(tile=32, step=16)] * 3)  # 48 % 32: overhang
    opts = dict(chunk_size=C, scale=0.25, causal=True, interpret=interpreting())
    lse, stats, out = nan(B, H, R, L), (nan(B, H, R, L), nan(B, H, R, L)), nan(B, H, L, d)
    acc = (nan(B, H, L, d), nan(2, B, H, L))  # running max and mass
    for r in range(R):
        tr.launch_round_forward(
            q, k, v, order, valid, buckets, r, out_acc=acc[0], lse_acc=acc[1], lse=lse,
            stats=stats, out=out if r == R - 1 else None, config=configs.fwd, **opts,
        )  # fmt: skip
        assert torch.isfinite(lse[:, :, r]).all() and torch.isfinite(acc[0]).all()
    assert all(torch.isfinite(t).all() for t in (out, *stats))
    grads = (nan(B, H, L, d), nan(B, H, L, d), nan(B, H, L, d))
    accumulators = (nan(B, H, L, d), nan(B, H, L, d), nan(B, H, L, d))
    total = torch.log_softmax(lse, dim=2)  # the log round weights
    dout = torch.randn_like(out)
    for r in range(R):
        tr.launch_round_backward(
            q, k, v, order, valid, buckets, r, stats=stats, lse=lse, lse_total=total,
            grad_dot=tr.launch_row_dot(dout, out), dout=dout, accumulators=accumulators,
            grads=grads if r == R - 1 else None, configs=configs, **opts,
        )  # fmt: skip
        assert all(torch.isfinite(t).all() for t in accumulators)
    assert all(torch.isfinite(t).all() for t in grads)


@in_process
@pytest.mark.parametrize("R", [1, 2])
def test_one_launch_backward_writes_every_position_each_round(monkeypatch, R):
    """NaN-poisoned accumulators and gradients: the one-launch backward's round 0 writes every
    position of both accumulators, the last round every gradient element (5 chunks in runs
    of 2: the last run ends past the head's last chunk)."""
    monkeypatch.setattr(trb, "MIN_PROGRAMS", 1)
    B, H, L, C, d = 1, 2, 80, 16, 16
    rounds = _rounds(B, H, L, C, R, causal=True, valid_frac=0.8, use_buckets=True)
    x, v = (_heads(B, H, L, d, torch.float32, "blhd").to(DEVICE) for _ in range(2))
    order, valid = rounds.order.to(DEVICE), rounds.key_valid.to(DEVICE).view(torch.uint8)
    buckets = rounds.buckets.to(DEVICE)
    opts = dict(chunk_size=C, scale=0.25, causal=True, interpret=interpreting())
    out, lse, stats = lsh_rounds_forward(
        x, None, v, order, stats=True, key_valid=rounds.key_valid.to(DEVICE), buckets=buckets,
        **{k: opts[k] for k in ("chunk_size", "scale", "causal")},
    )  # fmt: skip
    nan = lambda: torch.full((B, H, L, d), float("nan"), device=DEVICE)  # noqa: E731
    grads, accumulators = (nan(), nan()), (nan(), nan())
    dout = torch.randn_like(out)
    for r in range(R):
        trb.launch_round_backward_fused(
            x, v, order, valid, buckets, r, stats=stats, lse=lse,
            lse_total=torch.log_softmax(lse, dim=2), grad_dot=tr.launch_row_dot(dout, out),
            dout=dout, accumulators=grads if R == 1 else accumulators,
            grads=grads if r == R - 1 else None, config=tc.RunConfig(span=2), **opts,
        )  # fmt: skip
        if r < R - 1:
            assert all(torch.isfinite(t).all() for t in accumulators)
    assert all(torch.isfinite(t).all() for t in grads)


@in_process
def test_backward_in_head_passes_equals_one_pass(monkeypatch):
    """The backward taken a few heads at a time (to bound its fp32 accumulators) gives the very
    same gradients as all heads at once: uneven passes, batch 2 (strided head slices)."""
    from reformer_lab.kernels import rounds as kernel_rounds

    B, H, L, C, d, R = 2, 3, 64, 16, 16, 3
    rounds = _rounds(B, H, L, C, R, causal=True, valid_frac=0.8, use_buckets=True)
    q, k, v = (_heads(B, H, L, d, torch.bfloat16, "blhd").to(DEVICE) for _ in range(3))
    dout = _heads(B, H, L, d, torch.bfloat16, "bhld").to(DEVICE)
    order, options = _kernel_arguments(rounds, d**-0.5)
    out, lse, stats = lsh_rounds_forward(q, k, v, order, stats=True, **options)
    per_head = 2 * B * L * d * 4  # two fp32 accumulators of one head
    results = {}
    for heads_per_pass in (3, 2, 1):
        monkeypatch.setattr(kernel_rounds, "ACCUMULATOR_BYTES", heads_per_pass * per_head)
        passes = kernel_rounds.accumulator_passes(q.shape, R)
        assert [s.stop - s.start for s in passes] == {3: [3], 2: [2, 1], 1: [1, 1, 1]}[
            heads_per_pass
        ]
        results[heads_per_pass] = lsh_rounds_backward(
            q, k, v, order, out=out, lse=lse, stats=stats, dout=dout, **options
        )
    for heads_per_pass in (2, 1):
        for name, a, b in zip(("dq", "dk", "dv"), results[heads_per_pass], results[3]):
            assert torch.equal(a, b), (heads_per_pass, name)
    assert kernel_rounds.accumulator_passes(q.shape, 1) == [slice(0, 3)]  # R = 1: no accumulator


def _through_rounds_function(q, k, v, rounds, dout):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = lsh_rounds.attend_all_rounds(*leaves, rounds)
    out.backward(dout)
    with torch.no_grad():
        plain = lsh_rounds.attend_all_rounds(q, k, v, rounds)
    return [out.detach(), plain, *(t.grad for t in leaves)]


@in_process
@pytest.mark.parametrize("use_buckets", [False, True])
def test_rounds_function_fused_equals_torch_path(monkeypatch, use_buckets):
    """`_RoundsFunction` (and the no-grad path) with the fused kernels: same output and
    gradients as the torch path, which runs when the fused path is switched off."""
    B, H, L, C, d, R = 1, 2, 64, 16, 16, 2
    rounds = _rounds(B, H, L, C, R, causal=True, valid_frac=0.8, use_buckets=use_buckets)
    rounds.backend = "auto"
    q, k, v = (_heads(B, H, L, d, torch.float32, "blhd").to(DEVICE) for _ in range(3))
    dout = torch.randn(B, H, L, d, device=DEVICE)
    for name in ("order", "key_valid", "buckets"):
        value = getattr(rounds, name)
        setattr(rounds, name, None if value is None else value.to(DEVICE))
    results = {}
    for fused in (False, True):
        monkeypatch.setattr(lsh_rounds, "FUSED_ON_CPU_UNDER_INTERPRETER", fused)
        rounds.backend = "auto" if fused else "torch"
        assert lsh_rounds.fused_kernels_usable(q, k, v, rounds) == fused
        results[fused] = _through_rounds_function(q, k, v, rounds, dout)
    for name, a, b in zip(("out", "no-grad out", "dq", "dk", "dv"), results[True], results[False]):
        assert _relative_error(a, b) < 2e-5, name


@in_process
@pytest.mark.parametrize("fused", [False, True])
def test_rounds_write_into_a_given_buffer(monkeypatch, fused):
    """into=: a head group's columns of a wider (B, L, 2 H d) tensor receive the output, which
    is returned as that very view, with and without a graph; the values and gradients are those
    of a call without it, and the other columns are left alone."""
    B, H, L, C, d, R = 1, 2, 64, 16, 16, 2
    rounds = _rounds(B, H, L, C, R, causal=True, valid_frac=0.8, use_buckets=False)
    rounds.order, rounds.key_valid = rounds.order.to(DEVICE), rounds.key_valid.to(DEVICE)
    rounds.backend = "auto" if fused else "torch"
    monkeypatch.setattr(lsh_rounds, "FUSED_ON_CPU_UNDER_INTERPRETER", fused)
    q, k, v = (_heads(B, H, L, d, torch.float32, "blhd").to(DEVICE) for _ in range(3))
    dout = torch.randn(B, H, L, d, device=DEVICE)
    expected = _through_rounds_function(q, k, v, rounds, dout)
    wide = torch.full((2, B, L, 2 * H * d), float("nan"), device=DEVICE)
    into = [w[..., : H * d].view(B, L, H, d).transpose(1, 2) for w in wide]  # (B, H, L, d)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = lsh_rounds.attend_all_rounds(*leaves, rounds, into[0])
    out.backward(dout)
    with torch.no_grad():
        plain = lsh_rounds.attend_all_rounds(q, k, v, rounds, into[1])
    for got, buffer in zip((out, plain), into):
        assert got.data_ptr() == buffer.data_ptr() and torch.equal(got, buffer)
    assert torch.isnan(wide[..., H * d :]).all()
    got = [out.detach(), plain, *(t.grad for t in leaves)]
    for name, a, b in zip(("out", "no-grad out", "dq", "dk", "dv"), got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="into must be"):
        lsh_rounds.attend_all_rounds(q, k, v, rounds, into[0][..., :8])


@in_process
@pytest.mark.parametrize("attn_chunks, one_launch", [(1, False), (2, False), (2, True)])
def test_reformer_lm_with_fused_kernels_equals_torch_backend(monkeypatch, attn_chunks, one_launch):
    """The whole model, shared QK (keys formed in the kernels), reversible, 2 layers, the heads
    in one group or two (which write into one tensor of all heads): the same loss and
    parameter gradients with the fused kernels (rounds, LayerNorm, hashing, stream updates) as with the torch
    backend. one_launch: the rounds' backward by the one-launch kernel (in fp32 here, where
    the default takes the dk/dv and dq launches)."""
    from reformer_lab.kernels import rounds as kernel_rounds
    from reformer_lab.model import (
        ReformerConfig,
        ReformerLM,
        joint_projection,
        layer_norm,
        stream_add,
    )
    from reformer_lab.model.attention import hashing

    for module in (lsh_rounds, layer_norm, hashing, stream_add):
        monkeypatch.setattr(module, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    calls = {"hash": 0, "norm": 0, "stream": 0}

    def counting(name, test):
        def counted(*args):
            used = test(*args)
            calls[name] += used
            return used

        return counted

    monkeypatch.setattr(hashing, "fused_hash_usable", counting("hash", hashing.fused_hash_usable))
    monkeypatch.setattr(layer_norm, "fused_usable", counting("norm", layer_norm.fused_usable))
    monkeypatch.setattr(stream_add, "fused_usable", counting("stream", stream_add.fused_usable))
    joined = []  # the q, v projection's backward: its gradients read as one buffer, no copy
    whole = joint_projection.column_blocks_of_one
    monkeypatch.setattr(
        joint_projection, "column_blocks_of_one", lambda g: joined.append(whole(g)) or joined[-1]
    )
    if one_launch:
        monkeypatch.setattr(trb, "MIN_PROGRAMS", 1)
        defaults = kernel_rounds.default_round_configs
        monkeypatch.setattr(
            kernel_rounds,
            "default_round_configs",
            lambda *shape: dataclasses.replace(defaults(*shape), bwd=tc.RunConfig(span=2)),
        )
    tokens = torch.randint(0, 32, (2, 65), device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        joined.clear()
        torch.manual_seed(0)
        cfg = ReformerConfig(
            vocab_size=32, dim=32, depth=2, heads=2, max_seq_len=64, bucket_size=16,
            n_hashes=2, dropout=0.0, backend=backend, attn_chunks=attn_chunks,
        )  # fmt: skip
        model = ReformerLM(cfg).to(DEVICE)

        def step(model=model):
            loss = model.loss(tokens[:, :-1], tokens[:, 1:]).loss
            loss.backward()
            return loss.detach()

        launches = _count_launches(step)
        loss = launches.pop("result")
        results[backend] = [loss.detach(), *(p.grad for p in model.parameters())]
    # 2 layers (x groups), 2 rounds: the triton run fused them
    assert launches.get("_round_bwd_kernel", 0) == (2 * attn_chunks * 2 if one_launch else 0)
    assert calls["hash"] == 2 * attn_chunks and calls["norm"] >= 2 * 4
    assert calls["stream"] >= 2 * 4  # each branch's update, forward and recomputation
    assert len(joined) == 2 * attn_chunks and all(g is not None for g in joined)  # triton's
    names = ["loss", *(n for n, _ in model.named_parameters())]
    for name, a, b in zip(names, results["triton"], results["torch"]):
        assert _relative_error(a, b) < 1e-4, name


@in_process
def test_offloaded_streams_with_fused_kernels_equal_the_streams_on_the_device(monkeypatch):
    """offload_streams with every fused kernel (rounds, LayerNorm, hashing, stream updates,
    bias + GELU): the same loss and gradients as the streams on the device with them."""
    from reformer_lab.model import (
        ReformerConfig,
        ReformerLM,
        bias_gelu,
        layer_norm,
        stream_add,
    )
    from reformer_lab.model.attention import hashing

    for module in (lsh_rounds, layer_norm, hashing, stream_add, bias_gelu):
        monkeypatch.setattr(module, "FUSED_ON_CPU_UNDER_INTERPRETER", True)
    tokens = torch.randint(0, 32, (1, 129), device=DEVICE)
    results = {}
    for offload in (False, True):
        torch.manual_seed(0)
        cfg = ReformerConfig(
            vocab_size=32, dim=32, depth=2, heads=2, max_seq_len=128, bucket_size=16,
            n_hashes=2, dropout=0.0, backend="triton", ff_chunks=4, offload_streams=offload,
        )  # fmt: skip
        model = ReformerLM(cfg).to(DEVICE)
        loss = model.loss(tokens[:, :-1], tokens[:, 1:]).loss
        loss.backward()
        results[offload] = [loss.detach(), *(p.grad for p in model.parameters())]
    names = ["loss", *(n for n, _ in model.named_parameters())]
    for name, a, b in zip(names, results[True], results[False]):
        assert _relative_error(a, b) < 1e-5, name


@in_process
def test_fused_path_only_where_it_applies(monkeypatch):
    monkeypatch.setattr(lsh_rounds, "FUSED_ON_CPU_UNDER_INTERPRETER", not ON_GPU)
    rounds = _rounds(1, 2, 32, 16, 2, causal=True, valid_frac=None, use_buckets=False)
    rounds.order = rounds.order.to(DEVICE)
    q = torch.randn(1, 2, 32, 16, device=DEVICE)
    for backend in ("auto", "triton"):
        rounds.backend = backend
        assert lsh_rounds.fused_kernels_usable(q, q, q, rounds)
    rounds.backend = "torch"
    assert not lsh_rounds.fused_kernels_usable(q, q, q, rounds)
    rounds.backend = "auto"
    rounds.dedup = True  # appendix A's duplicate correction needs a score bias
    assert not lsh_rounds.fused_kernels_usable(q, q, q, rounds)
    rounds.dedup = False
    assert not lsh_rounds.fused_kernels_usable(q.double(), q.double(), q.double(), rounds)
    q48 = torch.randn(1, 2, 32, 48, device=DEVICE)
    assert not lsh_rounds.fused_kernels_usable(q48, q48, q48, rounds)  # head dim 48
    if not ON_GPU:
        monkeypatch.setattr(lsh_rounds, "FUSED_ON_CPU_UNDER_INTERPRETER", False)
        assert not lsh_rounds.fused_kernels_usable(q, q, q, rounds)


@pytest.mark.slow
@pytest.mark.skipif(READY, reason="the tests above ran in this process")
def test_in_fresh_process():
    """This file's tests, in a new interpreter process (see test_kernel_triton.py)."""
    rerun_in_fresh_process(__file__)
