"""Chunked attention: each chunk of a (sorted) sequence attends to itself and the chunk before it.

This is the inner loop shared by LSH attention (after sorting by bucket, sec 2) and local
attention (no sorting). It is the one function a faster backend replaces, so its exact
semantics are written here and the Triton kernel (`reformer_lab.kernels`) must match them:

For group g, query slot i in chunk c = i // C and key slot j in chunk c or c - 1 (chunk 0
has no look-back; there is no wrap-around), the score is

    s_ij = scale * <q_i, k_j> + bias_ij          (fp32 accumulation)

then replaced, in this order of precedence, by
    MASK_SCORE (-1e9)   if key j is invalid, or causal and pos_j > pos_i,
                         or buckets are given and bucket_j != bucket_i;
    SELF_SCORE (-1e5)   if pos_j == pos_i (a token sees itself only when nothing else is
                         available: its weight is exp(-1e5) ~ 0 next to any real key).
The outputs are out_i = sum_j softmax_j(s_ij) v_j and lse_i = logsumexp_j s_ij (fp32), the
normaliser that appendix A uses to merge hash rounds. Replacing scores by finite constants
(never -inf) keeps rows with every key masked finite, in fp16 and bf16 too, since the scores
are formed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_SCORE = -1e9
SELF_SCORE = -1e5


def look_back(x: Tensor, fill: float | int | bool = 0) -> Tensor:
    """(G, n, C, ...) -> (G, n, 2C, ...): each chunk preceded by the chunk before it.

    Chunk 0's look-back is filled with `fill` (callers mark it invalid).
    """
    previous = torch.cat([torch.full_like(x[:, :1], fill), x[:, :-1]], dim=1)  # (G, n, C, ...)
    return torch.cat([previous, x], dim=2)  # (G, n, 2C, ...)


def chunked_attention_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pos: Tensor,
    chunk_size: int,
    *,
    scale: float,
    causal: bool,
    key_valid: Tensor | None = None,
    buckets: Tensor | None = None,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference implementation of the module docstring's definition.

    q, k, v: (G, L, d) with L a multiple of chunk_size; pos: (G, L) integer original positions;
    key_valid: (G, L) bool or None (all valid); buckets: (G, L) int or None (attend across
    buckets); bias: (G, L // C, C, 2C) fp32 additive score bias or None.
    Returns out (G, L, d) in v's dtype and lse (G, L) in fp32.
    """
    G, L, d = q.shape
    C = chunk_size
    if L % C:
        raise ValueError(f"sequence length {L} is not a multiple of chunk_size {C}")
    n = L // C

    qc = q.reshape(G, n, C, d)  # (G, n, C, d)
    kc = look_back(k.reshape(G, n, C, d))  # (G, n, 2C, d)
    vc = look_back(v.reshape(G, n, C, d))  # (G, n, 2C, d)
    q_pos = pos.reshape(G, n, C)  # (G, n, C)
    k_pos = look_back(pos.reshape(G, n, C), fill=-1)  # (G, n, 2C)

    # First chunk's look-back half is padding; so are invalid keys.
    k_ok = torch.ones(G, n, 2 * C, dtype=torch.bool, device=q.device)
    k_ok[:, 0, :C] = False
    if key_valid is not None:
        k_ok &= look_back(key_valid.reshape(G, n, C), fill=False)

    score_dtype = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 when given fp64
    scores = torch.einsum("gnid,gnjd->gnij", qc, kc).to(score_dtype) * scale  # (G, n, C, 2C)
    if bias is not None:
        scores = scores + bias
    masked = ~k_ok[:, :, None, :]  # (G, n, 1, 2C)
    if causal:
        masked = masked | (k_pos[:, :, None, :] > q_pos[:, :, :, None])
    if buckets is not None:
        q_b = buckets.reshape(G, n, C)
        k_b = look_back(q_b, fill=-1)
        masked = masked | (k_b[:, :, None, :] != q_b[:, :, :, None])
    is_self = k_pos[:, :, None, :] == q_pos[:, :, :, None]  # (G, n, C, 2C)
    scores = scores.masked_fill(is_self, SELF_SCORE).masked_fill(masked, MASK_SCORE)

    lse = torch.logsumexp(scores, dim=-1)  # (G, n, C)
    # softmax, not exp(scores - lse): lse ~ -1e9 in fully masked rows has lost its log(2C).
    probs = torch.softmax(scores, dim=-1).to(v.dtype)  # (G, n, C, 2C)
    out = torch.einsum("gnij,gnjd->gnid", probs, vc)  # (G, n, C, d)
    return out.reshape(G, L, d), lse.reshape(G, L)


def normalize_keys(qk: Tensor) -> Tensor:
    """Shared-QK keys: the queries scaled to unit length (sec 2), (..., d) -> (..., d).

    Returned in the input's dtype (autocast would otherwise give fp32 keys beside bf16
    queries); the norm's reduction accumulates in fp32 anyway, and no fp32 copy of the
    queries is kept for the backward pass.
    """
    return F.normalize(qk, dim=-1, eps=1e-6).to(qk.dtype)
