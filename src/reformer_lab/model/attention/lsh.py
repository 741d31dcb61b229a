"""Shared-QK LSH attention (sec 2, 3 and appendix A).

Per head and hash round r:
  1. hash the shared query/key vectors, h(x) = argmax([xR; -xR]);
  2. sort positions by (bucket, position); padding sorts after every real token;
  3. split the sorted sequence into chunks of `bucket_size`; each chunk attends to itself and
     the chunk before it (`chunked.py`), with causal masks on the original positions;
  4. undo the sort, giving o_r(i) and its log-normaliser z_r(i).
Rounds are merged as in appendix A: o(i) = sum_r exp(z_r(i) - logsumexp_r' z_r'(i)) o_r(i).

Known subtlety (causal mode): which earlier keys share a query's chunk depends on the hashes
of other tokens, later ones included, so chunk *membership* is not causal. Causality holds for
the computation: no output depends through any score or value on a later position, so the
gradient of output i with respect to input j > i is exactly zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .backend import chunked_attention
from .chunked import look_back
from .hashing import bucket_factors, default_n_buckets, draw_rotations, hash_vectors, mix_seed

EVAL_STEP = -1  # the step id of the fixed eval rotations


class LSHAttentionCore(nn.Module):
    """(B, H, L, d) queries, keys, values -> (B, H, L, d), L a multiple of bucket_size.

    `plan` is a per-call dict in which the sort order is stored the first time and read back
    when the reversible backward recomputes the layer, so it sees the very same buckets.
    """

    def __init__(
        self,
        *,
        heads: int,
        head_dim: int,
        bucket_size: int,
        n_hashes: int,
        causal: bool,
        n_buckets: int | None,
        allow_duplicate_attention: bool,
        attend_across_buckets: bool,
        seed: int,
        layer_index: int,
        backend: str,
    ) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.bucket_size, self.n_hashes, self.causal = bucket_size, n_hashes, causal
        self.n_buckets = n_buckets
        self.allow_duplicate_attention = allow_duplicate_attention
        self.attend_across_buckets = attend_across_buckets
        self.seed, self.layer_index, self.backend = seed, layer_index, backend
        # Training steps taken: the training rotations are a function of it, and it is saved
        # with checkpoints, so a resumed run hashes exactly as the uninterrupted one.
        self.register_buffer("hash_step", torch.zeros((), dtype=torch.long))
        self._eval_rotations: dict[tuple, list[Tensor]] = {}

    # --- hashing --------------------------------------------------------------------
    def rotations(
        self, factors: tuple[int, ...], n_hashes: int, device: torch.device
    ) -> list[Tensor]:
        if self.training:
            step = int(self.hash_step)
            self.hash_step += 1
            seed = mix_seed(self.seed, self.layer_index, step)
            return draw_rotations(factors, self.heads, n_hashes, self.head_dim, seed, device)
        key = (factors, n_hashes, device)
        if key not in self._eval_rotations:
            seed = mix_seed(self.seed, self.layer_index, EVAL_STEP)
            self._eval_rotations[key] = draw_rotations(
                factors, self.heads, n_hashes, self.head_dim, seed, device
            )
        return self._eval_rotations[key]

    def buckets(self, qk: Tensor, key_valid: Tensor | None, n_hashes: int) -> Tensor:
        """(B, H, L, d) -> (B, H, R, L) bucket ids; padding gets the id one past the last."""
        L = qk.shape[2]
        n_buckets = self.n_buckets or default_n_buckets(L, self.bucket_size)
        factors = bucket_factors(n_buckets)
        buckets = hash_vectors(qk, self.rotations(factors, n_hashes, qk.device), factors)
        if key_valid is not None:
            pad_bucket = math.prod(factors)
            buckets = buckets.masked_fill(~key_valid[:, None, None, :], pad_bucket)
        return buckets

    # --- attention ------------------------------------------------------------------
    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_valid: Tensor | None,
        *,
        n_hashes: int | None = None,
        plan: dict | None = None,
    ) -> Tensor:
        B, H, L, d = q.shape
        R = n_hashes or self.n_hashes
        C = self.bucket_size

        if plan is not None and "order" in plan:
            order = plan["order"].long()  # (B, H, R, L)
            buckets = plan.get("buckets")
            R = order.shape[2]
        else:
            with torch.no_grad():
                buckets = self.buckets(q.detach(), key_valid, R)  # (B, H, R, L)
                positions = torch.arange(L, device=q.device)
                order = (buckets * L + positions).argsort(dim=-1)  # sort by (bucket, position)
            if plan is not None:
                plan["order"] = order.to(torch.int32)
                if not self.attend_across_buckets:
                    plan["buckets"] = buckets

        G = B * H * R
        flat_order = order.reshape(B, H, R * L)  # (B, H, R*L)

        def sort(x: Tensor) -> Tensor:  # (B, H, L, d) -> (G, L, d), each round's sorted copy
            index = flat_order[..., None].expand(-1, -1, -1, x.shape[-1])
            return x.gather(2, index).reshape(G, L, x.shape[-1])

        pos = order.reshape(G, L)  # original position of each sorted slot
        valid = None
        if key_valid is not None:
            valid = key_valid[:, None, None, :].expand(B, H, R, L).gather(3, order).reshape(G, L)
        sorted_buckets = None
        if not self.attend_across_buckets:
            sorted_buckets = buckets.gather(3, order).reshape(G, L)
        bias = None
        if not self.allow_duplicate_attention and R > 1:
            bias = duplicate_correction(order, C, torch.promote_types(q.dtype, torch.float32))

        out, lse = chunked_attention(
            sort(q),
            sort(k),
            sort(v),
            pos,
            C,
            scale=d**-0.5,
            causal=self.causal,
            key_valid=valid,
            buckets=sorted_buckets,
            bias=bias,
            backend=self.backend,
        )  # (G, L, d), (G, L)

        # Undo the sort: slot s of round r holds position order[r, s].
        undo = inverse_permutation(order)  # (B, H, R, L)
        out = out.reshape(B, H, R, L, d).gather(3, undo[..., None].expand(-1, -1, -1, -1, d))
        lse = lse.reshape(B, H, R, L).gather(3, undo)  # (B, H, R, L)

        # Appendix A: weight each round by its share of the total normaliser.
        weights = torch.softmax(lse, dim=2).to(out.dtype)  # (B, H, R, L)
        return (out * weights[..., None]).sum(dim=2)  # (B, H, L, d)


def inverse_permutation(order: Tensor) -> Tensor:
    """undo[..., order[..., s]] = s for permutations along the last dim."""
    undo = torch.empty_like(order)
    slots = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return undo.scatter_(-1, order, slots)


def duplicate_correction(order: Tensor, chunk_size: int, dtype: torch.dtype) -> Tensor:
    """Appendix A's correction for keys reached in several hash rounds.

    For query i and key j in round r's window, N_ij counts the rounds r' in which j lies in
    chunk(i, r') or chunk(i, r') - 1; the score gets -log N_ij, so the merged attention counts
    each (i, j) pair once. Returns the bias (B*H*R, n, C, 2C) in `dtype`.
    """
    B, H, R, L = order.shape
    C = chunk_size
    n = L // C
    chunk_of = inverse_permutation(order) // C  # (B, H, R, L): chunk of each position per round
    counts = torch.zeros(B, H, R, n, C, 2 * C, dtype=torch.int32, device=order.device)
    for r2 in range(R):
        # Chunk, in round r2, of the tokens sitting in each slot of every round r.
        loc = chunk_of[:, :, r2 : r2 + 1, :].expand(B, H, R, L).gather(3, order)  # (B, H, R, L)
        q_loc = loc.reshape(B * H * R, n, C)
        k_loc = look_back(q_loc, fill=-2)  # (B*H*R, n, 2C)
        diff = q_loc[..., :, None] - k_loc[..., None, :]  # (B*H*R, n, C, 2C)
        counts += ((diff == 0) | (diff == 1)).reshape(B, H, R, n, C, 2 * C).int()
    return -torch.log(counts.clamp(min=1).to(dtype)).reshape(B * H * R, n, C, 2 * C)
