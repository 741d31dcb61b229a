"""Multi-head self-attention: projections around one of the three attention cores.

With shared QK (sec 2) one projection gives both: the queries, and as keys the same vectors
normalised to unit length. Every core takes (B, H, L, d) tensors, so layers can mix kinds.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ReformerConfig
from ..joint_projection import joint_projection
from .chunked import normalize_keys
from .full import FullAttentionCore
from .local import LocalAttentionCore
from .lsh import LSHAttentionCore


def build_core(cfg: ReformerConfig, kind: str, layer_index: int) -> nn.Module:
    if kind == "lsh":
        return LSHAttentionCore(
            heads=cfg.heads,
            head_dim=cfg.head_dim,
            bucket_size=cfg.bucket_size,
            n_hashes=cfg.n_hashes,
            causal=cfg.causal,
            n_buckets=cfg.n_buckets,
            allow_duplicate_attention=cfg.allow_duplicate_attention,
            attend_across_buckets=cfg.attend_across_buckets,
            seed=cfg.seed,
            layer_index=layer_index,
            backend=cfg.backend,
        )
    if kind == "local":
        return LocalAttentionCore(
            bucket_size=cfg.bucket_size, causal=cfg.causal, backend=cfg.backend
        )
    return FullAttentionCore(causal=cfg.causal, shared_qk=cfg.shared_qk)


class SelfAttention(nn.Module):
    """(B, L, dim) -> (B, L, dim); heads can be computed in groups (see `forward`)."""

    def __init__(self, cfg: ReformerConfig, kind: str, layer_index: int) -> None:
        super().__init__()
        self.kind, self.heads, self.shared_qk = kind, cfg.heads, cfg.shared_qk
        self.head_dim = cfg.head_dim
        inner = cfg.heads * cfg.head_dim
        self.to_q = nn.Linear(cfg.dim, inner, bias=False)  # the shared QK projection if shared_qk
        self.to_k = None if cfg.shared_qk else nn.Linear(cfg.dim, inner, bias=False)
        self.to_v = nn.Linear(cfg.dim, inner, bias=False)
        self.to_out = nn.Linear(inner, cfg.dim)
        self.core = build_core(cfg, kind, layer_index)
        # The LSH core forms shared-QK keys itself (in its fused kernels where they run).
        self.keys_in_core = cfg.shared_qk and kind == "lsh"

    def split_heads(self, x: Tensor) -> Tensor:  # (B, L, h*d) -> (B, h, L, d)
        B, L, _ = x.shape
        return x.view(B, L, -1, self.head_dim).transpose(1, 2)

    def head_rows(self, linear: nn.Linear, heads: slice) -> Tensor:
        """The rows of a projection's weight that produce heads `heads`: (h*d, dim)."""
        return linear.weight[heads.start * self.head_dim : heads.stop * self.head_dim]

    def heads_output(
        self,
        x: Tensor,
        key_valid: Tensor | None = None,
        *,
        n_hashes: int | None = None,
        plan: dict | None = None,
        heads: slice | None = None,
        into: Tensor | None = None,
    ) -> Tensor:
        """(B, L, dim) -> (B, L, h*d): heads `heads` (all by default), concatenated, before
        the output projection.

        into: a (B, L, h*d) tensor of v's dtype (say, the group's columns of all heads'
        output) which the LSH core writes the output into and which is then returned; the
        other cores return a tensor of their own, which the caller copies where it wants it."""
        heads = heads if heads is not None else slice(0, self.heads)
        if self.keys_in_core:  # q and v: column blocks of one matmul's output
            w_q, w_v = self.head_rows(self.to_q, heads), self.head_rows(self.to_v, heads)
            q, v = joint_projection(x, w_q, w_v)  # (B, L, h*d) each
            k = None
        else:
            q = F.linear(x, self.head_rows(self.to_q, heads))  # (B, L, h*d)
            k = None if self.to_k is None else F.linear(x, self.head_rows(self.to_k, heads))
            v = F.linear(x, self.head_rows(self.to_v, heads))
        return self.attend_heads(
            q, k, v, key_valid, n_hashes=n_hashes, plan=plan, heads=heads, into=into
        )

    def attend_heads(
        self,
        q: Tensor,
        k: Tensor | None,
        v: Tensor,
        key_valid: Tensor | None = None,
        *,
        n_hashes: int | None = None,
        plan: dict | None = None,
        heads: slice | None = None,
        into: Tensor | None = None,
    ) -> Tensor:
        """The core on projected heads: (B, L, h*d) queries, keys (None: shared QK, the
        queries normalised) and values of heads `heads` -> (B, L, h*d) (`into` as in
        `heads_output`)."""
        heads = heads if heads is not None else slice(0, self.heads)
        q, v = self.split_heads(q), self.split_heads(v)  # (B, h, L, d)
        if k is not None:
            k = self.split_heads(k)
        elif not self.keys_in_core:
            k = normalize_keys(q)
        options = dict(n_hashes=n_hashes, plan=plan, heads=heads)
        if into is not None and self.kind == "lsh":
            options["into"] = self.split_heads(into)  # (B, h, L, d) view
        out = self.core(q, k, v, key_valid, **options)
        B, h, L, d = out.shape
        return out.transpose(1, 2).reshape(B, L, h * d)  # (B, L, h*d)

    def projection_weights(self) -> list[Tensor]:
        """The weights of q, k (separate keys only) and v, in that order: (h*d, dim) each."""
        keys = [] if self.to_k is None else [self.to_k.weight]
        return [self.to_q.weight, *keys, self.to_v.weight]

    def head_columns(self, t: Tensor, heads: slice) -> Tensor:
        """Heads `heads`' columns of a (..., heads*d) tensor (their outputs, say), a view."""
        return t[..., heads.start * self.head_dim : heads.stop * self.head_dim]

    def projected_columns(self, qkv: Tensor, heads: slice) -> tuple[Tensor, Tensor | None, Tensor]:
        """Heads `heads`' queries, keys (None with shared QK) and values as column views of
        qkv (B, L, n * heads*d), the output of the `projection_weights` concatenated."""
        parts = [
            self.head_columns(part, heads) for part in qkv.split(self.heads * self.head_dim, -1)
        ]
        return parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]

    def out_projection(self, heads: slice) -> tuple[Tensor, Tensor | None]:
        """The output projection's columns for heads `heads` (dim, h*d), and its bias for the
        group of head 0 (None otherwise)."""
        w_out = self.head_columns(self.to_out.weight, heads)  # (dim, h*d)
        return w_out, self.to_out.bias if heads.start == 0 else None

    def forward(
        self,
        x: Tensor,
        key_valid: Tensor | None = None,
        *,
        n_hashes: int | None = None,
        plan: dict | None = None,
        heads: slice | None = None,
    ) -> Tensor:
        """(B, L, dim) -> (B, L, dim): the output projection of heads `heads` (all by default).
        The projection is linear in the concatenated heads, so the parts of disjoint head
        groups add up to the whole; the group of head 0 carries the output bias."""
        heads = heads if heads is not None else slice(0, self.heads)
        out = self.heads_output(x, key_valid, n_hashes=n_hashes, plan=plan, heads=heads)
        return F.linear(out, *self.out_projection(heads))  # (B, L, dim), the matmul's dtype
