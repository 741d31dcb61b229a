"""One layer's decoding cache: keys, values and (LSH) bucket ids of every position so far.

Nothing else is kept: the reversible layers need no activations at inference (sec 3), and the
new token's two residual streams are computed afresh at each step. Memory per layer is
2 * B * H * T * d_head numbers for keys and values plus B * H * R * T int32 bucket ids.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..attention.chunked import normalize_keys
from ..attention.hashing import bucket_factors, default_n_buckets, hash_buckets
from ..attention.lsh import EVAL_STEP, LSHAttentionCore
from ..attention.self_attention import SelfAttention
from .attend import attend_full, attend_local, attend_lsh


def project(attention: SelfAttention, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys, values of the attention input a = LN(x2): (B, n, dim) -> 3 x (B, H, n, d).

    The same projections as `SelfAttention.forward`: with shared QK the keys are the queries
    normalised to unit length (sec 2).
    """
    q = attention.split_heads(attention.to_q(a))  # (B, H, n, d)
    shared = attention.to_k is None
    k = normalize_keys(q) if shared else attention.split_heads(attention.to_k(a))  # (B, H, n, d)
    v = attention.split_heads(attention.to_v(a))  # (B, H, n, d)
    return q, k, v


def generation_n_buckets(core: LSHAttentionCore, capacity: int) -> int:
    """Buckets used for the whole generation: the configured number, else the default for the
    padded final length (prompt + new tokens)."""
    if core.n_buckets is not None:
        return core.n_buckets
    padded = math.ceil(capacity / core.bucket_size) * core.bucket_size
    return default_n_buckets(padded, core.bucket_size)


class BucketHasher:
    """h(x) = argmax([xR; -xR]) with an LSH layer's fixed eval rotations and fixed n_buckets."""

    def __init__(self, core: LSHAttentionCore, n_buckets: int, device: torch.device) -> None:
        if core.training:
            raise RuntimeError("hash with the eval rotations: put the model in eval() mode first")
        self.n_buckets = n_buckets
        self.factors = bucket_factors(n_buckets)
        self.rotations = core.rotations(self.factors, core.n_hashes, device, EVAL_STEP)
        self.backend = core.backend

    def __call__(self, keys: Tensor) -> Tensor:
        """(B, H, n, d) -> (B, H, R, n) int32 bucket ids."""
        return hash_buckets(keys, self.rotations, self.factors, backend=self.backend)


class LayerCache:
    """Keys and values (B, H, capacity, d) of one layer, filled left to right."""

    def __init__(self, attention: SelfAttention, capacity: int) -> None:
        self.attention, self.capacity, self.length = attention, capacity, 0
        self.kind = attention.kind
        self.core = attention.core
        self.keys: Tensor | None = None  # (B, H, capacity, d)
        self.values: Tensor | None = None  # (B, H, capacity, d)
        self.buckets: Tensor | None = None  # (B, H, R, capacity) int32, LSH only
        self.hasher: BucketHasher | None = None

    def append(self, a: Tensor) -> Tensor:
        """Cache the keys/values of n new positions from their attention input a (B, n, dim).

        Returns their queries (B, H, n, d).
        """
        q, k, v = project(self.attention, a)  # (B, H, n, d) each
        B, H, n, d = k.shape
        if self.length + n > self.capacity:
            raise RuntimeError(f"cache holds {self.capacity} positions; {self.length + n} asked")
        if self.keys is None:
            self.keys = k.new_empty(B, H, self.capacity, d)
            self.values = v.new_empty(B, H, self.capacity, d)
            if self.kind == "lsh":
                n_buckets = generation_n_buckets(self.core, self.capacity)
                self.hasher = BucketHasher(self.core, n_buckets, k.device)
                R = self.core.n_hashes
                self.buckets = torch.empty(
                    B, H, R, self.capacity, dtype=torch.int32, device=k.device
                )
        assert self.values is not None
        span = slice(self.length, self.length + n)
        self.keys[:, :, span] = k
        self.values[:, :, span] = v
        if self.hasher is not None:
            assert self.buckets is not None
            self.buckets[..., span] = self.hasher(k)  # (B, H, R, n)
        self.length += n
        return q

    def attend(self, q: Tensor) -> Tensor:
        """Attention of the last cached position t = length - 1 with query q: (B, H, d) -> (B, H, d)."""
        assert self.keys is not None and self.values is not None
        T, keys, values = self.length, self.keys, self.values  # (B, H, capacity, d)
        if self.kind == "full":
            return attend_full(q, keys, values, length=T, shared_qk=self.attention.shared_qk)
        if self.kind == "local":
            return attend_local(q, keys, values, length=T, chunk=self.core.bucket_size)
        assert self.buckets is not None
        return attend_lsh(
            q,
            keys,
            values,
            self.buckets[..., :T],
            chunk=self.core.bucket_size,
            local_window=self.core.attend_across_buckets,
            dedup=not self.core.allow_duplicate_attention,
        )

    def nbytes(self) -> int:
        """Bytes held: keys, values and bucket ids."""
        held = [x for x in (self.keys, self.values, self.buckets) if x is not None]
        return sum(x.numel() * x.element_size() for x in held)
