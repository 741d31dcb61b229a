"""Attention of the one new query at position t over the cached keys (see generation.py).

Every function takes the new query q (B, H, d) and a layer's caches keys / values
(B, H, capacity, d), contiguous, of which positions 0..t (t = length - 1, the new token
included) are filled, and returns the output (B, H, d). Scores are formed in fp32 (or
fp64 for fp64 inputs) as in `attention/chunked.py`; self (j == t) scores SELF_SCORE, so it is
attended to only when no other key is there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..attention.chunked import MASK_SCORE, SELF_SCORE


def wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def window_start(t: int, chunk: int) -> int:
    """First position of the local window of t: the start of the chunk before t's chunk."""
    return max(0, (t // chunk - 1) * chunk)


def scores_of(q: Tensor, keys: Tensor) -> Tensor:
    """(B, H, d) x (B, H, ..., T, d) -> (B, H, ..., T) scaled dot products in fp32."""
    d = q.shape[-1]
    q_col = q.reshape(*q.shape[:2], *([1] * (keys.dim() - 4)), d, 1)  # (B, H, [1,] d, 1)
    return (keys @ q_col)[..., 0].to(wide(q.dtype)) * d**-0.5


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[b, h, index[b, h, k]] for contiguous x (B, H, T, d), index (B, H, K) -> (B, H, K, d).

    One index_select over the flattened rows (several times faster than gather on CPU).
    """
    B, H, T, d = x.shape
    K = index.shape[-1]
    offsets = torch.arange(B * H, device=x.device)[:, None] * T  # (B*H, 1)
    rows = (offsets + index.reshape(B * H, K)).reshape(-1)  # (B*H*K,)
    return x.view(B * H * T, d).index_select(0, rows).view(B, H, K, d)


def softmax_out(scores: Tensor, values: Tensor) -> Tensor:
    """softmax(scores) @ values: (..., T) x (..., T, d) -> (..., d) in the values' dtype."""
    probs = torch.softmax(scores, dim=-1).to(values.dtype)  # (..., T)
    return (probs[..., None, :] @ values)[..., 0, :]


def attend_full(q: Tensor, keys: Tensor, values: Tensor, *, length: int, shared_qk: bool) -> Tensor:
    """Causal full attention of position t = length - 1 over the keys of positions 0..t.

    With shared QK, self is excluded whenever another key exists (t > 0), as in `full.py`.
    """
    t = length - 1
    scores = scores_of(q, keys[:, :, :length])  # (B, H, t + 1)
    if shared_qk and t > 0:
        scores[..., t] = float("-inf")
    return softmax_out(scores, values[:, :, :length])  # (B, H, d)


def attend_local(q: Tensor, keys: Tensor, values: Tensor, *, length: int, chunk: int) -> Tensor:
    """Local attention of t = length - 1 over its chunk and the chunk before (absolute positions)."""
    t = length - 1
    window = slice(window_start(t, chunk), length)
    scores = scores_of(q, keys[:, :, window])  # (B, H, t + 1 - start)
    scores[..., -1] = SELF_SCORE
    return softmax_out(scores, values[:, :, window])  # (B, H, d)


def lsh_members(buckets: Tensor, *, chunk: int, local_window: bool) -> Tensor:
    """P_r(t) as a mask: (B, H, R, T) bucket ids of positions 0..t -> (B, H, R, T) bool.

    j is a member in round r when bucket_r(j) == bucket_r(t), or (local_window) when j lies
    in t's chunk or the chunk before it. One integer comparison per cached position.
    """
    t = buckets.shape[-1] - 1
    members = buckets == buckets[..., t:]  # (B, H, R, T)
    if local_window:
        members[..., window_start(t, chunk) :] = True
    return members


def gather_members(members: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of each round's members, left-aligned and padded to the largest count.

    (B, H, R, T) bool -> index (B, H, R, M) int64 and slot_ok (B, H, R, M) bool; padding
    slots point at position T - 1 (self) and are marked not ok.
    """
    B, H, R, T = members.shape
    flat = members.reshape(-1, T)  # (G, T)
    counts = flat.sum(-1)  # (G,)
    M = int(counts.max())
    rank = flat.cumsum(-1) - 1  # (G, T): slot of each member in its row
    rows, cols = flat.nonzero(as_tuple=True)  # (nnz,) each
    index = torch.full((flat.shape[0], M), T - 1, dtype=torch.long, device=members.device)
    index[rows, rank[rows, cols]] = cols
    slot_ok = torch.arange(M, device=members.device) < counts[:, None]  # (G, M)
    return index.view(B, H, R, M), slot_ok.view(B, H, R, M)


def attend_lsh(
    q: Tensor,
    keys: Tensor,
    values: Tensor,
    buckets: Tensor,
    *,
    chunk: int,
    local_window: bool,
    dedup: bool,
) -> Tensor:
    """Multi-round LSH attention of t = T - 1 over its bucket members (appendix A merge).

    q (B, H, d); keys, values (B, H, capacity, d); buckets (B, H, R, T): the ids of positions
    0..t, T = t + 1. Per round r the output o_r and log-normaliser z_r are taken over P_r(t)
    (`lsh_members`), gathered from the cache; with `dedup` a key reached in N_tj rounds
    scores -log N_tj more. Output: sum_r softmax_r(z_r) o_r, (B, H, d).
    """
    B, H, R, T = buckets.shape
    d = keys.shape[-1]
    members = lsh_members(buckets, chunk=chunk, local_window=local_window)  # (B, H, R, T)
    index, slot_ok = gather_members(members)  # (B, H, R, M) each
    M = index.shape[-1]
    k_sel = take_rows(keys, index.view(B, H, R * M)).view(B, H, R, M, d)
    v_sel = take_rows(values, index.view(B, H, R * M)).view(B, H, R, M, d)

    scores = scores_of(q, k_sel)  # (B, H, R, M)
    if dedup and R > 1:
        n_rounds = members.sum(2, dtype=scores.dtype)  # (B, H, T): N_tj
        scores = scores - n_rounds.gather(2, index.view(B, H, R * M)).view(B, H, R, M).log()
    scores = scores.masked_fill(index == T - 1, SELF_SCORE).masked_fill(~slot_ok, MASK_SCORE)

    z = torch.logsumexp(scores, dim=-1)  # (B, H, R)
    o = softmax_out(scores, v_sel)  # (B, H, R, d)
    weights = torch.softmax(z, dim=-1).to(o.dtype)  # (B, H, R)
    return (weights[..., None] * o).sum(2)  # (B, H, d)
