"""experiments/perf's CPU memory meter, and the memory it shows the training step saving.

LiveBytes must count what a caching allocator would: each storage once, from its creation
until it dies, in forward and backward alike. Then the byte counts of the step's parts, with
the fused round kernels' launches skipped (their wrappers allocate exactly as on a GPU).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

PERF = Path(__file__).resolve().parents[2] / "experiments" / "perf"
if str(PERF) not in sys.path:
    sys.path.insert(0, str(PERF))

from live_bytes import LiveBytes  # noqa: E402

from reformer_lab.model import ReformerConfig, ReformerLM  # noqa: E402


def test_live_bytes_counts_each_storage_once_until_it_dies():
    before = torch.zeros(1000)  # not the meter's: neither it nor its views count
    with LiveBytes() as meter:
        before[:10].add_(1)
        assert meter.live == 0
        a = torch.empty(1000)  # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)  # 4000
        view = b.view(50, 10)  # a view: no new storage
        assert meter.live == 8000
        assert sorted(meter.peak_owners) == [(4000, "empty float32"), (4000, "empty float64")]
        del a
        assert meter.live == 4000
        c = torch.ones(250) * 2  # ones (1000) dies after the product (1000) exists
        assert meter.live == 5000 and meter.peak == 8000
        x = torch.randn(100, dtype=torch.float64, requires_grad=True)
        (x * x).sum().backward()  # backward allocations are counted too
        assert meter.live == 5000 + 800 + 800  # x and x.grad; the unnamed loss died
    assert meter.peak > 8000  # the backward's moment with x, x * x, their grads
    del view, c


def test_peak_is_the_worst_moment_not_the_end():
    with LiveBytes() as meter:
        for _ in range(3):
            t = torch.zeros(10_000)  # 40 KB, freed on the next pass
            del t
    assert meter.peak == 40_000 and meter.live == 0


def _step_peak(model: ReformerLM, tokens: torch.Tensor, via_loss: bool) -> tuple[int, list]:
    """Peak live bytes of one training step; the grads of the parameters, for comparison."""
    model.zero_grad(set_to_none=True)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with LiveBytes() as meter:
        if via_loss:
            loss = model.loss(inputs, targets).loss
        else:  # the same loss from the public streams, whose gradients are not the model's own
            y1, y2 = model.streams(inputs)
            logits = model.head(model.features(y1, y2)).float()
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
    return meter.peak, [p.grad.clone() for p in model.parameters()]


def test_loss_works_in_its_own_stream_gradients_instead_of_copies():
    """`ReformerLM.loss` lets the reversible backward overwrite the incoming gradients (the two
    halves of the final norm's input gradient) instead of copying them: the same gradients,
    at least 2 x (L, dim) fp32 fewer bytes at the peak. Full attention, loss in one chunk."""
    L, dim = 512, 64
    cfg = ReformerConfig(
        vocab_size=16, dim=dim, depth=2, heads=2, max_seq_len=L, bucket_size=32,
        attention="full", dropout=0.0, loss_chunk_size=1 << 20,
    )  # fmt: skip
    torch.manual_seed(0)
    model = ReformerLM(cfg)
    tokens = torch.randint(0, 16, (1, L + 1))
    peak_own, grads_own = _step_peak(model, tokens, via_loss=True)
    peak_copy, grads_copy = _step_peak(model, tokens, via_loss=False)
    for a, b in zip(grads_own, grads_copy):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert peak_copy - peak_own >= 2 * L * dim * 4, (peak_own, peak_copy)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_fused_backward_holds_two_fp32_accumulators_per_head_pass(monkeypatch):
    """lsh_rounds_backward's own allocations at their peak: the three gradients, two fp32
    accumulators of one pass's heads and the small per-row terms, never three fp32
    accumulators of every head (what it held before the passes and phases)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets CPU tensors through the input checks
    from cpu_memory import kernels_skipped

    from reformer_lab.kernels import rounds as kernel_rounds

    B, H, L, d, R, C = 1, 8, 1024, 64, 4, 64
    monkeypatch.setattr(kernel_rounds, "ACCUMULATOR_BYTES", 2 * (2 * B * L * d * 4))  # 2 heads
    q, k, v, out, dout = (torch.randn(B, H, L, d, dtype=torch.bfloat16) for _ in range(5))
    order = torch.argsort(torch.randint(0, 16, (B, H, R, L)), dim=-1, stable=True)
    lse, m, log_l = (torch.randn(B, H, R, L) for _ in range(3))
    unit = B * H * L * d  # elements of one (B, H, L, d) tensor
    with kernels_skipped(), LiveBytes(owners=None) as meter:
        grads = kernel_rounds.lsh_rounds_backward(
            q, k, v, order, C, scale=d**-0.5, causal=True, out=out, lse=lse,
            stats=(m, log_l), dout=dout,
        )  # fmt: skip
    assert [g.shape for g in grads] == [q.shape] * 3
    rows = B * H * R * L * 4 + B * H * L * 4  # log round weights, <dout, out>
    per_pass = 2 * (2 * B * L * d * 4)  # two fp32 accumulators of two heads
    expected = 3 * unit * 2 + per_pass + rows  # 3 bf16 gradients
    assert expected <= meter.peak <= expected + 2 * (per_pass // 2) // R, meter.peak_owners[:6]
    assert meter.peak < 3 * unit * 2 + 3 * unit * 4  # all heads' 3 fp32 accumulators: gone


def test_summed_cross_entropy_holds_one_fp32_block(monkeypatch):
    """Forward + backward of the loss on bf16 logits: one fp32 block of rows and the bf16
    gradient at once, where F.cross_entropy on the fp32 logits holds three fp32 (N, V)."""
    import torch.nn.functional as F

    from reformer_lab.model import row_blocks
    from reformer_lab.model.cross_entropy import summed_cross_entropy

    monkeypatch.setattr(row_blocks, "BLOCK_ELEMENTS", 1024 * 256)  # blocks of 1024 rows

    N, V = 4096, 256
    logits = torch.randn(N, V, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    fp32 = N * V * 4
    with LiveBytes() as ours:
        summed_cross_entropy(logits, targets).backward()
    logits.grad = None
    with LiveBytes() as theirs:
        F.cross_entropy(logits.float(), targets, reduction="sum").backward()
    assert ours.peak <= fp32 // 4 + N * V * 2 + 64 * N, ours.peak_owners[:4]
    assert theirs.peak >= 3 * fp32, theirs.peak_owners[:4]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_op_census_counts_the_fused_launches_and_the_matmul_flops(tmp_path):
    """op_census.py on a tiny step: every fused kernel of the step is launched (LayerNorm
    forward and backward, hashing, the rounds), and the matmul FLOPs it counts are those of
    the model's linear layers (2 x rows x in x out a product, 3 products a layer's backward)."""
    import subprocess

    src = Path(__file__).resolve().parents[2] / "src"
    env = {"TRITON_INTERPRET": "1", "PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, str(PERF / "op_census.py"), "--config", "tiny", "--seq", "256",
         "--scale-to", "256", "--top", "5"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    fused = ("_ln_fwd_kernel", "_ln_bwd_kernel", "_hash_kernel", "_round_fwd_kernel")
    for kernel in (*fused, "_round_bwd_kernel"):  # tiny in bf16: the one-launch backward
        assert f"'{kernel}'" in out, out
    gflop = float(out.split("; matmul ")[1].split(" GFLOP")[0])
    # tiny: 2 layers of q, v, out (64 x 64) and FF (64 x 256, 256 x 64); head 128 x 256
    per_token = 2 * (3 * 64 * 64 + 2 * 64 * 256) * 2 + 2 * 128 * 256
    assert 3 * 256 * per_token / 1e9 <= gflop <= 5 * 256 * per_token / 1e9, out
