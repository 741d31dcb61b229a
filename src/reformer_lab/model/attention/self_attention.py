"""Multi-head self-attention: projections around one of the three attention cores.

With shared QK (sec 2) one projection gives both: the queries, and as keys the same vectors
normalised to unit length. Every core takes (B, H, L, d) tensors, so layers can mix kinds.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import ReformerConfig
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
    """(B, L, dim) -> (B, L, dim)."""

    def __init__(self, cfg: ReformerConfig, kind: str, layer_index: int) -> None:
        super().__init__()
        self.kind, self.heads, self.shared_qk = kind, cfg.heads, cfg.shared_qk
        inner = cfg.heads * cfg.head_dim
        self.to_q = nn.Linear(cfg.dim, inner, bias=False)  # the shared QK projection if shared_qk
        self.to_k = None if cfg.shared_qk else nn.Linear(cfg.dim, inner, bias=False)
        self.to_v = nn.Linear(cfg.dim, inner, bias=False)
        self.to_out = nn.Linear(inner, cfg.dim)
        self.core = build_core(cfg, kind, layer_index)

    def split_heads(self, x: Tensor) -> Tensor:  # (B, L, H*d) -> (B, H, L, d)
        B, L, _ = x.shape
        return x.view(B, L, self.heads, -1).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        key_valid: Tensor | None = None,
        *,
        n_hashes: int | None = None,
        plan: dict | None = None,
    ) -> Tensor:
        q = self.split_heads(self.to_q(x))  # (B, H, L, d)
        k = normalize_keys(q) if self.to_k is None else self.split_heads(self.to_k(x))
        v = self.split_heads(self.to_v(x))  # (B, H, L, d)
        out = self.core(q, k, v, key_valid, n_hashes=n_hashes, plan=plan)  # (B, H, L, d)
        B, H, L, d = out.shape
        return self.to_out(out.transpose(1, 2).reshape(B, L, H * d))  # (B, L, dim)
