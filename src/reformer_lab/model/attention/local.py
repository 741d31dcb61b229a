"""Local attention: chunks of `bucket_size` attend to themselves and the chunk before, no hashing.

The LSH layer without the sort, for ablations and as a cheap layer to mix with LSH ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backend import chunked_attention


class LocalAttentionCore(nn.Module):
    """(B, H, L, d) queries, keys, values -> (B, H, L, d), L a multiple of bucket_size."""

    def __init__(self, *, bucket_size: int, causal: bool, backend: str) -> None:
        super().__init__()
        self.bucket_size, self.causal, self.backend = bucket_size, causal, backend

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_valid: Tensor | None,
        *,
        n_hashes: int | None = None,
        plan: dict | None = None,
        heads: slice | None = None,
    ) -> Tensor:
        B, H, L, d = q.shape
        pos = torch.arange(L, device=q.device).expand(B * H, L)  # (B*H, L)
        valid = None
        if key_valid is not None:
            valid = key_valid[:, None, :].expand(B, H, L).reshape(B * H, L)
        out, _ = chunked_attention(
            q.reshape(B * H, L, d),
            k.reshape(B * H, L, d),
            v.reshape(B * H, L, d),
            pos,
            self.bucket_size,
            scale=d**-0.5,
            causal=self.causal,
            key_valid=valid,
            backend=self.backend,
        )  # (B*H, L, d)
        return out.reshape(B, H, L, d)
