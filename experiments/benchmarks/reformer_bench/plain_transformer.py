"""The `full` and `full-ckpt` baselines: a plain pre-LN causal transformer.

What a user picks instead of a Reformer: softmax attention over all earlier positions through
`torch.nn.functional.scaled_dot_product_attention` (the flash kernel on Hopper under bf16, so
no (N, N) score matrix is stored), a GELU feed-forward of width 4·d, and NO positional
embedding: a causal transformer recovers order from its mask ("NoPE"), and a learned table
of 1M positions would dwarf the model. `checkpoint_blocks=True` stores only each block's
input and recomputes the block in the backward pass (torch.utils.checkpoint), the usual
memory saver for long sequences.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    """x + Attn(LN(x)), then x + FF(LN(x)): the pre-LN residual block."""

    def __init__(self, dim: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape  # (B, N, d)
        qkv = self.qkv(self.attn_norm(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, N, dh)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, N, dh)
        x = x + self.attn_out(attended.transpose(1, 2).reshape(b, n, d))  # (B, N, d)
        return x + self.ff(self.ff_norm(x))  # (B, N, d)


class PlainTransformerLM(nn.Module):
    """Token embedding -> `depth` blocks -> LN -> vocabulary logits."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        heads: int,
        ff_mult: int = 4,
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.checkpoint_blocks = checkpoint_blocks
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)  # (B, N, d)
        for block in self.blocks:
            if self.checkpoint_blocks and x.requires_grad:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.head(self.norm(x))  # (B, N, vocab)

    def loss(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy (nats); targets[:, t] is what position t predicts."""
        logits = self(tokens)  # (B, N, vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
