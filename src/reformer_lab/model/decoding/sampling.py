"""Choosing the next token from the last position's logits: greedy, temperature, top-k, top-p.

temperature = 0      argmax (greedy)
temperature > 0      sample from softmax(logits / temperature), after
    top_k            keeping only the k largest logits, and/or
    top_p            keeping the smallest set of most likely tokens whose probability
                     reaches top_p ("nucleus" sampling, Holtzman et al. 2020).
"""

from __future__ import annotations

import torch
from torch import Tensor


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """(B, V) -> (B, V) with every logit below the k-th largest of its row set to -inf."""
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, p: float) -> Tensor:
    """(B, V) -> (B, V) keeping the most likely tokens until their probability reaches p.

    A token is dropped when the tokens more likely than it already hold probability >= p, so
    the most likely token always stays.
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)  # (B, V)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, V)
    drop_sorted = mass_before >= p  # (B, V)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, float("-inf"))


def next_token(
    logits: Tensor,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """(B, V) logits -> (B,) int64 token ids."""
    logits = logits.float()
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
