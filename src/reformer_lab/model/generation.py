"""`generate`: autoregressive sampling from a `ReformerLM`, with a per-layer cache.

    out = generate(model, prompt, max_new_tokens=256, temperature=1.0, top_k=None, top_p=None,
                   use_cache=True, generator=None)      # (B, N) int64 -> (B, N + new) int64

temperature=0.0 is greedy; top_k / top_p filter the distribution (decoding/sampling.py);
`generator` makes sampling reproducible. The model runs in eval mode under no_grad and every
module's training flag is restored afterwards. use_cache=False recomputes the whole sequence
for every new token (the baseline): token t+1 is drawn from model(tokens[:, :t+1])[:, -1].

Cached decoding (use_cache=True)
--------------------------------
Prefill: the model's own forward runs once over the prompt, so the prompt positions follow
the model's normal semantics and the first new token is drawn from model(prompt)[:, -1]
exactly. A forward pre-hook on each layer's attention branch captures its input x2 at the
prompt positions; the keys and values of LN(x2) (and, for LSH layers, their bucket ids) are
cached. They are never updated afterwards.

Step: the new token at position t (0-based) gets x1 = x2 = Embed(token) + AxialPos(t) (the
single row t of the axial table) and runs through the layers alone: Y1 = X1 + Attn(LN(X2)),
Y2 = X2 + FF(LN(Y1)) (sec 3), appending its key/value (and buckets) to each layer's cache
before attending. Memory: the caches only (keys and values per layer, bucket ids), no
activations; reversible layers need nothing else. Per layer the new query at t attends to:

- full attention: the keys and values of all positions j <= t. With shared QK (sec 2) the keys
  are the normalised queries and a token sees itself only when no other key exists: for t > 0
  self is excluded. This is exactly what recomputation does at position t, so cached greedy
  generation is identical to recomputation (tested: tokens equal, per-step logits allclose).
- local attention: the window of positions j <= t in t's chunk and the chunk before it,
  in absolute positions (chunk = bucket_size), self scoring SELF_SCORE; again exactly the
  recomputed value at t, so generation is identical to recomputation (tested).
- LSH attention: R = n_hashes rounds with the layer's fixed EVAL rotations (core.rotations in
  eval mode) and a number of buckets fixed for the whole generation: cfg.n_buckets if set,
  else default_n_buckets(prompt + max_new_tokens padded to a multiple of bucket_size,
  bucket_size). Every cached key vector (the unit-length shared-QK vector) is hashed once with
  these rotations, giving bucket_r(j) per round; the new token's key is hashed the same way.
  In round r the query at t attends to

      P_r(t) = {j <= t : bucket_r(j) == bucket_r(t)}  U  {j <= t in t's chunk or the chunk
               before it (absolute positions)}

  with scores <q_t, k_j> / sqrt(d), self (j == t) scoring SELF_SCORE = -1e5 (weight ~0 unless
  alone). Each round gives o_r(t) and its log-normaliser z_r(t) = logsumexp_{j in P_r(t)}
  s_tj; rounds merge by appendix A, o(t) = sum_r exp(z_r - logsumexp_r' z_r') o_r. When
  cfg.allow_duplicate_attention is False, a key in N_tj of the sets P_1(t)..P_R(t) scores
  -log N_tj more (appendix A's duplicate correction). When cfg.attend_across_buckets is
  False the local-window part is dropped: P_r(t) = {j <= t : bucket_r(j) == bucket_r(t)}.

How cached LSH relates to the chunked training-time computation (attention/lsh.py): there,
per round, all L positions are sorted by (bucket, position) and cut into chunks of C =
bucket_size slots; a query attends to the keys in its chunk and the previous chunk, causally
masked, so to at most 2C keys per round. That window can contain members of neighbouring
buckets (the tail of bucket b-1 or the head of b+1 when they share a chunk) and misses the
members of a large bucket that lie more than a chunk or two earlier in the sort; which keys
share a chunk depends on how many tokens fall in each bucket, later tokens included, and
n_buckets depends on the padded length of the call. The cached set has none of these
effects: it is every earlier member of the query's own bucket (no cap) plus its absolute local
window, membership depends only on positions <= t, and n_buckets is fixed. The two agree
exactly when the whole padded sequence is a single chunk (L <= C: both sets are then all
j <= t; tested); otherwise cached LSH is a different, causal, approximation of the same full
attention, and greedy tokens can differ from recomputation (experiments/generation/README.md
measures how often). Recomputation also recomputes the prompt positions with the grown
sequence (other chunk boundaries and n_buckets), whereas the cache keeps their prefill values.

Work per new token and layer: one integer comparison per cached position and round (to find
the bucket members), then dot products only with the gathered members (LSH) or the window
(local); full attention reads all t + 1 keys, which is what it attends to.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .decoding import IncrementalDecoder, next_token

if TYPE_CHECKING:
    from .lm import ReformerLM


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """model.eval() inside; every submodule's own training flag restored on exit."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def check_generate_args(
    model: ReformerLM,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    use_cache: bool,
    generator: torch.Generator | None,
) -> None:
    """Raise ValueError (saying what to change) for any argument `generate` cannot honour."""
    cfg = model.cfg
    if not cfg.causal:
        raise ValueError(
            "generate needs a causal model (cfg.causal=True); this one attends in both directions"
        )
    if not isinstance(prompt, Tensor) or prompt.dim() != 2:
        shape = tuple(prompt.shape) if isinstance(prompt, Tensor) else type(prompt).__name__
        raise ValueError(f"prompt must be a (batch, seq) integer tensor, got {shape}")
    if prompt.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"prompt must hold int64 token ids, got {prompt.dtype}")
    B, N = prompt.shape
    if B == 0 or N == 0:
        raise ValueError(f"prompt {tuple(prompt.shape)} is empty: give at least one token per row")
    device = next(model.parameters()).device
    if prompt.device != device:
        raise ValueError(f"prompt is on {prompt.device} but the model is on {device}")
    lo, hi = int(prompt.min()), int(prompt.max())
    if lo < 0 or hi >= cfg.vocab_size:
        raise ValueError(f"prompt token ids span [{lo}, {hi}] but vocab_size={cfg.vocab_size}")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 0
    ):
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if N + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"prompt length {N} + max_new_tokens {max_new_tokens} = {N + max_new_tokens} exceeds "
            f"max_seq_len={cfg.max_seq_len}: shorten the prompt or ask for fewer tokens"
        )
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}"
        )
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= cfg.vocab_size
    ):
        raise ValueError(
            f"top_k must be None or an integer in 1..vocab_size={cfg.vocab_size}, got {top_k!r}"
        )
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1
    ):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if not isinstance(use_cache, bool):
        raise ValueError(f"use_cache must be True or False, got {use_cache!r}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator)}")
        if generator.device.type != device.type:
            raise ValueError(
                f"generator is on {generator.device} but sampling runs on {device}: "
                f"create it with torch.Generator(device={str(device)!r})"
            )


def generate(
    model: ReformerLM,
    prompt: Tensor,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, N) prompt -> (B, N + max_new_tokens) int64: the prompt followed by the new tokens.

    See the module docstring for what the cache computes.
    """
    check_generate_args(
        model, prompt, max_new_tokens, temperature, top_k, top_p, use_cache, generator
    )
    B, N = prompt.shape
    total = N + max_new_tokens
    out = torch.empty(B, total, dtype=torch.int64, device=prompt.device)  # (B, N + new)
    out[:, :N] = prompt
    if max_new_tokens == 0:
        return out

    def choose(logits: Tensor) -> Tensor:  # (B, vocab) -> (B,)
        return next_token(
            logits, temperature=float(temperature), top_k=top_k, top_p=top_p, generator=generator
        )

    with torch.no_grad(), eval_mode(model):
        decoder = IncrementalDecoder(model, total) if use_cache else None
        logits = decoder.prefill(out[:, :N]) if decoder else model(out[:, :N])[:, -1]
        for t in range(N, total):
            out[:, t] = choose(logits)
            if t + 1 == total:
                break
            if decoder is not None:
                logits = decoder.step(out[:, t])  # (B, vocab)
            else:
                logits = model(out[:, : t + 1])[:, -1]  # (B, vocab)
    return out
