"""Summed cross-entropy of (N, V) logits whose backward holds one fp32 block of rows at a time.

    loss = sum_i [t_i counted] (logsumexp_v z_iv - z_i t_i)
    d loss / d z_iv = [t_i counted] (softmax(z_i)_v - [v = t_i])

`F.cross_entropy` on fp32 logits keeps the fp32 copy and its log-softmax for the backward, and
its backward makes two more (N, V) fp32 tensors. Here the forward keeps only the logits as they
came (bf16 under autocast) and one logsumexp per row; the backward forms softmax - one-hot in
one fp32 buffer, in place, a block of rows at a time (`row_blocks`), into a gradient in the
logits' dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .row_blocks import row_blocks


class _SummedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, ignore_index: int, owned: bool) -> Tensor:
        wide = torch.promote_types(logits.dtype, torch.float32)
        counted = targets != ignore_index  # (N,)
        picks = torch.where(counted, targets, 0)  # (N,) any valid class for ignored rows
        lse = torch.cat(
            [torch.logsumexp(logits[b].to(wide), dim=-1) for b in row_blocks(*logits.shape)]
        )  # (N,)
        picked = logits.gather(1, picks[:, None]).squeeze(1).to(wide)  # (N,) z_i t_i
        ctx.save_for_backward(logits, picks, counted, lse)
        ctx.owned = owned
        return ((lse - picked) * counted).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, picks, counted, lse = ctx.saved_tensors
        scale = grad * counted  # (N,)
        out = logits if ctx.owned else torch.empty_like(logits)  # owned: overwritten in place
        for b in row_blocks(*logits.shape):
            d = logits[b].to(lse.dtype).sub_(lse[b, None]).exp_()  # (n, V) softmax, fp32
            d.scatter_add_(1, picks[b, None], torch.full_like(d[:, :1], -1.0))
            out[b] = d.mul_(scale[b, None])
            del d  # before the next block's buffer exists
        return out, None, None, None


def summed_cross_entropy(
    logits: Tensor, targets: Tensor, ignore_index: int = -100, logits_owned: bool = False
) -> Tensor:
    """sum over rows whose target is not `ignore_index` of -log softmax(logits)[target], fp32.

    logits (N, V) any float dtype, targets (N,) int64; the same value and gradient as
    `F.cross_entropy(logits.float(), targets, ignore_index=..., reduction="sum")`.
    logits_owned: the caller promises nothing reads the logits after the backward, which then
    writes their gradient into their own memory (one (N, V) buffer fewer).
    """
    return _SummedCrossEntropy.apply(logits, targets, ignore_index, logits_owned)
