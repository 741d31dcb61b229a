"""The language-model head and loss over the two residual streams, a chunk of positions at a
time in both passes.

    h = LayerNorm([Y1; Y2])        logits = h W + b        loss = sum_i CE(logits_i, t_i)

Forward: chunk by chunk, without a graph; only the streams (kept by the reversible layers
anyway) and the targets are saved. Backward: each chunk's head and loss are recomputed and
differentiated, and the chunk's stream gradients are written straight into two (B, L, dim)
buffers by the LayerNorm's backward (`layer_norm_to`'s grad_into), which become the streams'
gradients. So neither the (B, N, 2 dim) features nor more than one chunk's logits exist, and
the stream gradients exist once: not as a per-chunk gradient, a zero-padded copy per chunk
(the backward of slicing) and their running sum.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .cross_entropy import summed_cross_entropy
from .layer_norm import layer_norm_to, matmul_dtype


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y1, y2, targets, n, chunk, ignore_index, norm, head, backend, *params):
        device = y1.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        total = y1.new_zeros((), dtype=torch.promote_types(y1.dtype, torch.float32))
        correct = torch.zeros((), dtype=torch.long, device=y1.device)
        for s in _chunks(n, chunk):
            part, hits = chunk_loss(
                y1[:, s], y2[:, s], targets[:, s], norm, head, backend, ignore_index
            )
            total += part
            correct += hits
        ctx.save_for_backward(y1, y2, targets)
        ctx.options = (n, chunk, ignore_index, norm, head, backend)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_total, _):
        y1, y2, targets = ctx.saved_tensors
        n, chunk, ignore_index, norm, head, backend = ctx.options
        params = [*norm.parameters(), *head.parameters()]
        dy1, dy2 = torch.zeros_like(y1), torch.zeros_like(y2)  # (B, L, dim): padding gets 0
        param_grads: list[Tensor | None] = [None] * len(params)
        for s in _chunks(n, chunk):
            grads = chunk_loss_backward(
                y1[:, s], y2[:, s], targets[:, s], grad_total, (dy1[:, s], dy2[:, s]),
                norm, head, backend, ignore_index, autocast=ctx.autocast,
            )  # fmt: skip
            param_grads = [g if a is None else a + g for a, g in zip(param_grads, grads)]
            del grads
        return dy1, dy2, None, None, None, None, None, None, None, *param_grads


def _chunks(n: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, n)) for start in range(0, n, chunk)]


def _logits(y1, y2, norm, head, backend, grad_into=None) -> Tensor:
    """head(LayerNorm([y1; y2])) for 2 x (B, c, dim), in the head's dtype under autocast."""
    h = layer_norm_to((y1, y2), norm, matmul_dtype(y1), grad_into=grad_into, backend=backend)
    return head(h)  # (B, c, vocab)


def chunk_loss(
    y1: Tensor, y2: Tensor, t: Tensor, norm, head, backend: str, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy fp32, correct argmax predictions int64) of targets t (B, c)
    against head(norm([y1; y2])) for one chunk of the streams 2 x (B, c, dim); no graph."""
    logits = _logits(y1, y2, norm, head, backend)  # (B, c, vocab)
    total = summed_cross_entropy(logits.flatten(0, 1), t.reshape(-1), ignore_index)
    return total, ((logits.argmax(-1) == t) & (t != ignore_index)).sum()


def chunk_loss_backward(
    y1: Tensor,
    y2: Tensor,
    t: Tensor,
    grad_total: Tensor,
    grad_into: tuple[Tensor, Tensor],
    norm,
    head,
    backend: str,
    ignore_index: int,
    *,
    autocast: tuple[bool, torch.dtype],
) -> list[Tensor]:
    """`chunk_loss` recomputed and differentiated against grad_total: the streams' gradients
    are ADDED into grad_into (two (B, c, dim) buffers), the norm's and head's parameter
    gradients returned in that order. autocast: (enabled, dtype) of the forward pass."""
    params = [*norm.parameters(), *head.parameters()]
    enabled, dtype = autocast
    with torch.enable_grad(), torch.autocast(y1.device.type, dtype=dtype, enabled=enabled):
        logits = _logits(y1, y2, norm, head, backend, grad_into=grad_into)  # (B, c, vocab)
        # the logits feed only this loss: their gradient takes their memory
        loss = summed_cross_entropy(logits.flatten(0, 1), t.reshape(-1), ignore_index, True)
    return list(torch.autograd.grad(loss, params, grad_total))


def chunked_head_loss(
    y1: Tensor,
    y2: Tensor,
    targets: Tensor,
    n: int,
    *,
    norm: nn.LayerNorm,
    head: nn.Linear,
    chunk: int,
    ignore_index: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy fp32, number of correct argmax predictions int64) of targets
    (B, n) against head(norm([y1; y2])) at the first n positions of the streams 2 x (B, L, dim).
    Differentiable w.r.t. the streams and the norm's and head's parameters."""
    params = (*norm.parameters(), *head.parameters())
    return _ChunkedHeadLoss.apply(
        y1, y2, targets, n, chunk, ignore_index, norm, head, backend, *params
    )
