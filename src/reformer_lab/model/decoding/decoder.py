"""Incremental decoding of a `ReformerLM`: one pass over the prompt, then one position per step.

The decoder reads the model's modules and weights and changes none of them. For the new token
at position t it runs the reversible layers (sec 3) on that position alone,

    x1 = x2 = Embed(token) + AxialPos(t)                         (B, 1, dim)
    per layer: a = LN(x2); cache k, v (and buckets) of a;
               y1 = x1 + Out(Attn(q_t, cached keys/values)); y2 = x2 + G(y1)
    logits = Head(LN([y1; y2]))                                   (B, vocab)

with the cached attention of `attend.py`. The prompt pass runs the model's own forward and
fills each layer's cache from LN(x2), x2 being the input of its attention branch, captured by
a forward pre-hook on the branch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .cache import LayerCache
from .positions import position_row

if TYPE_CHECKING:
    from ..lm import ReformerLM


class IncrementalDecoder:
    """Per-layer caches for one batch of sequences of up to `capacity` positions.

    decoder.prefill(prompt) -> logits of the last prompt position (B, vocab), equal to
    model(prompt)[:, -1]; decoder.step(tokens) -> logits (B, vocab) after appending tokens (B,).
    The model must be in eval() mode (dropout off, fixed hash rotations).
    """

    def __init__(self, model: ReformerLM, capacity: int) -> None:
        self.model, self.capacity = model, capacity
        self.caches = [LayerCache(layer.f.attention, capacity) for layer in model.layers]
        self.length = 0

    def _require_eval(self) -> None:
        if self.model.training:
            raise RuntimeError("decoding needs model.eval(): dropout off and fixed hash rotations")

    def prefill(self, prompt: Tensor) -> Tensor:
        """(B, N) prompt -> (B, vocab) logits of position N - 1; fills every layer's cache."""
        self._require_eval()
        if self.length:
            raise RuntimeError("prefill() runs once, on an empty decoder")
        n_prompt = prompt.shape[1]
        if n_prompt > self.capacity:
            raise ValueError(
                f"prompt of {n_prompt} tokens exceeds the decoder capacity {self.capacity}"
            )

        def hook_for(layer, cache: LayerCache):
            def fill(_branch, args) -> None:
                # The attention branch's input x2 at the prompt positions (padding cut):
                # the cache holds the keys/values of its LN(x2), (B, N, dim).
                if cache.length:
                    raise RuntimeError("an attention branch ran twice during prefill")
                cache.append(layer.f.norm(args[0][:, :n_prompt]))

            return fill

        handles = [
            layer.f.register_forward_pre_hook(hook_for(layer, cache))
            for layer, cache in zip(self.model.layers, self.caches)
        ]
        try:
            logits = self.model(prompt)[:, -1]  # (B, vocab)
        finally:
            for handle in handles:
                handle.remove()
        missing = [i for i, cache in enumerate(self.caches) if cache.length != n_prompt]
        if missing:
            raise RuntimeError(f"prefill saw no attention input for layers {missing}")
        self.length = n_prompt
        return logits

    def step(self, tokens: Tensor) -> Tensor:
        """Append tokens (B,) at position t = length; return their logits (B, vocab)."""
        self._require_eval()
        if not self.length:
            raise RuntimeError("call prefill(prompt) before step()")
        t = self.length
        if t >= self.capacity:
            raise RuntimeError(f"the decoder is full: capacity {self.capacity} positions")
        model = self.model
        x = model.token_emb(tokens) + position_row(model.pos_emb, t)  # (B, dim)
        x1 = x2 = x[:, None]  # (B, 1, dim)
        for layer, cache in zip(model.layers, self.caches):
            attention = layer.f.attention
            q = cache.append(layer.f.norm(x2))  # (B, H, 1, d)
            o = cache.attend(q[:, :, 0])  # (B, H, d)
            y1 = x1 + attention.to_out(o.reshape(o.shape[0], 1, -1))  # (B, 1, dim)
            x2 = x2 + layer.g(y1)  # (B, 1, dim)
            x1 = y1
        self.length += 1
        h = model.norm(torch.cat([x1, x2], dim=-1))  # (B, 1, 2 dim)
        return model.head(h)[:, 0]  # (B, vocab)

    def nbytes(self) -> int:
        """Bytes held by all caches (the decoder holds nothing else)."""
        return sum(cache.nbytes() for cache in self.caches)
