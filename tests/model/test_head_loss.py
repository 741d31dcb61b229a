"""chunked_head_loss: the value and gradients of the whole-sequence head and loss, computed a
chunk at a time, with the streams' gradients written into one buffer each."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reformer_lab.model.head_loss import chunked_head_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "perf"))
from live_bytes import LiveBytes


def _parts(B=2, L=13, d=6, vocab=7):
    torch.manual_seed(0)
    norm, head = nn.LayerNorm(2 * d).double(), nn.Linear(2 * d, vocab).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    y1 = torch.randn(B, L, d, dtype=torch.float64, requires_grad=True)
    y2 = torch.randn(B, L, d, dtype=torch.float64, requires_grad=True)
    return norm, head, y1, y2


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_value_and_gradients_equal_the_unchunked_loss(chunk):
    """n = 11 of L = 13 positions (the last two are padding: zero gradient), one target
    ignored, B = 2 (a chunk of a stream is then not one block of rows)."""
    norm, head, y1, y2 = _parts()
    n = 11
    targets = torch.randint(0, 7, (2, n))
    targets[1, 3] = -100
    total, correct = chunked_head_loss(
        y1, y2, targets, n, norm=norm, head=head, chunk=chunk, ignore_index=-100, backend="torch"
    )
    params = [y1, y2, *norm.parameters(), *head.parameters()]
    got = torch.autograd.grad(total, params)

    logits = head(norm(torch.cat([y1, y2], -1)[:, :n]))
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
    want = torch.autograd.grad(ref, params)
    torch.testing.assert_close(total, ref, rtol=1e-12, atol=1e-12)
    counted = targets != -100
    assert correct == ((logits.argmax(-1) == targets) & counted).sum()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert (got[0][:, n:] == 0).all() and (got[1][:, n:] == 0).all()


def test_stream_gradients_exist_once():
    """The backward's own bytes: the two stream gradients and one chunk's work, not a
    zero-padded copy of each stream per chunk and their running sums."""
    B, L, d, vocab, chunk = 1, 16384, 32, 16, 256
    norm, head = nn.LayerNorm(2 * d), nn.Linear(2 * d, vocab)
    y1 = torch.randn(B, L, d, requires_grad=True)
    y2 = torch.randn(B, L, d, requires_grad=True)
    targets = torch.randint(0, vocab, (B, L))
    total, _ = chunked_head_loss(
        y1, y2, targets, L, norm=norm, head=head, chunk=chunk, ignore_index=-100, backend="torch"
    )
    with LiveBytes(owners=None) as meter:
        total.backward()
    streams = 2 * B * L * d * 4  # dY1, dY2 in fp32: 4 MB
    per_chunk = 16 * B * chunk * 2 * d * 4  # 16 fp32 (chunk, 2 dim) temporaries: 1 MB
    assert streams <= meter.peak <= streams + per_chunk, meter.peak_owners[:6]
