"""Brute-force references the model is tested against: loops over explicit key sets."""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK, SELF = -1e9, -1e5


def attend(
    q: Tensor, keys: Tensor, values: Tensor, scores_fix: list[float | None]
) -> tuple[Tensor, Tensor]:
    """One query against an explicit key list. scores_fix[j] replaces score j when not None."""
    scores = (keys @ q) / math.sqrt(q.shape[-1])
    scores = torch.stack(
        [s if fix is None else s.new_tensor(fix) for s, fix in zip(scores, scores_fix)]
    )
    lse = torch.logsumexp(scores, 0)
    return torch.softmax(scores, 0) @ values, lse


def full_shared_qk(qk: Tensor, v: Tensor, causal: bool, valid: Tensor | None = None) -> Tensor:
    """Shared-QK attention over all allowed keys, self only when nothing else: (L, d) -> (L, d)."""
    L = qk.shape[0]
    keys = torch.nn.functional.normalize(qk, dim=-1)
    out = []
    for i in range(L):
        allowed = [j for j in range(L) if (not causal or j <= i) and (valid is None or valid[j])]
        others = [j for j in allowed if j != i]
        chosen = others if others else [i]
        o, _ = attend(qk[i], keys[chosen], v[chosen], [None] * len(chosen))
        out.append(o)
    return torch.stack(out)


def lsh_rounds(
    qk: Tensor,
    v: Tensor,
    order: Tensor,
    chunk: int,
    causal: bool,
    valid: Tensor | None,
    dedup: bool,
) -> Tensor:
    """Appendix A evaluated literally from each round's sort order: (L, d), (R, L) -> (L, d).

    P_r(i) = tokens in the chunk of i or the chunk before, in round r's sorted order. Masked
    keys score MASK, self scores SELF; with `dedup`, a key reached in N rounds scores -log N
    more. o(i) = sum_r exp(z_r(i) - logsumexp_r z_r(i)) o_r(i).
    """
    R, L = order.shape
    keys = torch.nn.functional.normalize(qk, dim=-1)
    slot_of = torch.empty_like(order)
    for r in range(R):
        slot_of[r, order[r]] = torch.arange(L)

    def window(r: int, i: int) -> list[int]:
        c = int(slot_of[r, i]) // chunk
        first = max(0, c - 1) * chunk
        return [int(t) for t in order[r, first : (c + 1) * chunk]]

    out = []
    for i in range(L):
        outs, lses = [], []
        for r in range(R):
            P = window(r, i)
            fixes = []
            for j in P:
                if (valid is not None and not valid[j]) or (causal and j > i):
                    fixes.append(MASK)
                elif j == i:
                    fixes.append(SELF)
                else:
                    fixes.append(None)
            o, z = attend_with_bias(
                qk[i],
                keys[P],
                v[P],
                fixes,
                [
                    (-math.log(sum(j in window(r2, i) for r2 in range(R))) if dedup else 0.0)
                    for j in P
                ],
            )
            outs.append(o)
            lses.append(z)
        w = torch.softmax(torch.stack(lses), 0)
        out.append((w[:, None] * torch.stack(outs)).sum(0))
    return torch.stack(out)


def attend_with_bias(q, keys, values, fixes, biases):
    scores = (keys @ q) / math.sqrt(q.shape[-1]) + torch.tensor(biases, dtype=q.dtype)
    scores = torch.stack([s if f is None else s.new_tensor(f) for s, f in zip(scores, fixes)])
    return torch.softmax(scores, 0) @ values, torch.logsumexp(scores, 0)
