"""Full attention through `torch.nn.functional.scaled_dot_product_attention`.

With shared QK the paper's self mask applies: a token attends to itself only when no other
key is allowed (sec 2), which as a boolean mask is: allowed = causal & valid & not-self, and
rows left empty get their diagonal back. That is exactly the chunked path's SELF_SCORE rule in
fp32 (exp(-1e5) underflows to 0 next to any real key).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FullAttentionCore(nn.Module):
    """(B, H, L, d) queries, keys, values -> (B, H, L, d)."""

    def __init__(self, *, causal: bool, shared_qk: bool) -> None:
        super().__init__()
        self.causal, self.shared_qk = causal, shared_qk

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
        if not self.shared_qk and key_valid is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # flash path
        L = q.shape[2]
        allowed = torch.ones(L, L, dtype=torch.bool, device=q.device)  # (Lq, Lk)
        if self.causal:
            allowed = allowed.tril()
        eye = torch.eye(L, dtype=torch.bool, device=q.device)
        if self.shared_qk:
            allowed = allowed & ~eye
        allowed = allowed[None, None]  # (1, 1, Lq, Lk)
        if key_valid is not None:
            allowed = allowed & key_valid[:, None, None, :]  # (B, 1, Lq, Lk)
        empty = ~allowed.any(dim=-1, keepdim=True)  # rows with nothing to attend to
        allowed = allowed | (empty & eye)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
