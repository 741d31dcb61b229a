"""`ReformerLM`: token + axial position embeddings -> reversible layers -> norm -> vocabulary.

    x = Embed(tokens) + AxialPos(positions)          (B, N, d)
    (X1, X2) = (x, x)                                  two residual streams (sec 3)
    for each layer: Y1 = X1 + Attn(LN(X2)); Y2 = X2 + FF(LN(Y1))
    h = LN([Y1; Y2])                                   (B, N, 2d)
    logits = h W                                       (B, N, vocab)

Inputs of any length up to max_seq_len are padded to a multiple of the attention chunk and
the padding is masked: it is sorted after every real token by LSH, never attended to, and
cut away before the head, so it never changes the outputs at real positions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..strided import same_elements
from . import stream_add
from .attention import SelfAttention
from .config import ReformerConfig
from .feedforward import FeedForward, dropout_layer, sequence_chunks
from .head_loss import chunked_head_loss
from .host_streams import HostStreams
from .layer_norm import layer_norm_to, matmul_dtype
from .matmul_bias_grad import column_sums
from .positional import AxialPositionalEmbedding
from .reversible import ReversibleLayer, RngState, add_grads, replaying, run_layers
from .streamed import streamed_loss


class LMLoss(NamedTuple):
    loss: Tensor
    """Mean cross-entropy (nats) over counted targets; differentiable."""
    n_tokens: Tensor
    """Number of counted targets (int64)."""
    n_correct: Tensor
    """How many counted targets are the argmax prediction (int64)."""


AUTO_GROUP_ELEMENTS = 1 << 28
"""attn_chunks="auto": the activation elements one head group may hold (512 MiB in bf16)..."""
AUTO_GROUP_STREAM_SHARE = 3
"""... or, where that is more, this many times the elements of one residual stream (B, L, dim),
which the step holds four fp32 buffers of (8 stream-sizes of bf16), so the group adds at most
3/8 to them ..."""
AUTO_GROUP_MAX_ELEMENTS = 3 << 27
"""... but never more than this (768 MiB in bf16). On an H200 (`profile_step.py --graph`),
base @ 256K in two groups of four heads: 260 ms and 3.90 GB, against four groups of two: 287 ms
and 3.68 GB; tiny @ 1M (d 64, four heads of 16) in one group: 2.72 GB and 94 ms, against two:
2.21 GB and 96 ms. Per head both hold the same, but a stream of tiny is an eighth of base's
and its group would double the memory beyond the streams, not add a tenth."""
PROJECTION_CHUNK_ELEMENTS = 1 << 24
"""Elements of one sequence chunk of the attention's output projection in the reversible
passes (32 MiB in bf16: 32K positions at d 512)."""


def check_token_range(tokens: Tensor, vocab_size: int) -> None:
    """Token ids outside [0, vocab_size) fail here with their span (one device sync)."""
    lo, hi = (int(v) for v in torch.aminmax(tokens))
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids span [{lo}, {hi}] but vocab_size={vocab_size}")


class AttentionBranch(nn.Module):
    """F(x) = Dropout(Attention(LayerNorm(x))), heads computed in `attn_chunks` groups.

    The output projection is linear in the concatenated heads, so F(x) = Dropout(b + sum_g
    W_g A_g(LN(x))) over head groups g: each group's activations exist only while it is
    computed, in the forward pass and in the reversible recomputation alike.
    """

    def __init__(self, cfg: ReformerConfig, kind: str, layer_index: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim)
        self.attention = SelfAttention(cfg, kind, layer_index)
        self.dropout = dropout_layer(cfg.dropout)
        self.heads, self.head_dim, self.attn_chunks = cfg.heads, cfg.head_dim, cfg.attn_chunks
        self.backend = cfg.backend

    def head_groups(self, x: Tensor) -> list[slice]:
        """The head groups computed one at a time for input x (B, L, dim): `attn_chunks` of
        them, or with "auto" as many as keep a group's activations (q, v, the output, their
        gradients: ~6 (B, L, d) per head) within the budget AUTO_GROUP_* describe."""
        chunks = self.attn_chunks
        if chunks == "auto":
            B, L, dim = x.shape
            per_head = 6 * B * L * self.head_dim
            by_streams = min(AUTO_GROUP_STREAM_SHARE * B * L * dim, AUTO_GROUP_MAX_ELEMENTS)
            budget = max(AUTO_GROUP_ELEMENTS, by_streams)
            heads_per_group = max(1, budget // per_head)
            chunks = -(-self.heads // heads_per_group)
        return [slice(s.start, s.stop) for s in sequence_chunks(self.heads, chunks)]

    def group(
        self,
        x: Tensor,
        heads: slice,
        key_valid: Tensor | None,
        n_hashes,
        plan,
        grad_into: Tensor | None = None,
    ) -> Tensor:
        """One head group's share of the pre-dropout output (the first group's has the bias),
        in the matmuls' dtype: bf16 under bf16 autocast, half the bytes of an fp32 copy.
        grad_into: the backward adds x's gradient into it (see `layer_norm_to`)."""
        out = self.group_heads(x, heads, key_valid, n_hashes, plan, grad_into)
        return F.linear(out, *self.attention.out_projection(heads))  # (B, L, dim)

    def group_heads(
        self,
        x: Tensor,
        heads: slice,
        key_valid: Tensor | None,
        n_hashes,
        plan,
        grad_into: Tensor | None = None,
        into: Tensor | None = None,
    ) -> Tensor:
        """One head group's attention output before the output projection: (B, L, h*d),
        written into `into` where the attention can (`SelfAttention.heads_output`)."""
        h = layer_norm_to(x, self.norm, matmul_dtype(x), grad_into, self.backend)  # (B, L, dim)
        return self.attention.heads_output(
            h, key_valid, n_hashes=n_hashes, plan=plan, heads=heads, into=into
        )

    @property
    def drops(self) -> bool:
        """Whether the branch's dropout is active (its mask then covers the whole output)."""
        return isinstance(self.dropout, nn.Dropout) and self.training

    def projection_chunks(self, x: Tensor) -> list[slice]:
        """Sequence chunks in which the output projection's result exists, each within
        PROJECTION_CHUNK_ELEMENTS: the forward and the recomputation use the same ones, so the
        recomputation subtracts exactly the values the forward added."""
        B, L, dim = x.shape
        return sequence_chunks(L, -(-B * L * dim // PROJECTION_CHUNK_ELEMENTS))

    def add_into(
        self, y: Tensor, x: Tensor, key_valid: Tensor | None, *, n_hashes=None, plan=None
    ) -> None:
        """y += F(x) IN PLACE, for the reversible forward without an active dropout. LN(x) is
        formed once and each head group's output O_g written into one (B, L, h*d) tensor O, the
        concatenated heads; then y += O W^T + b a sequence chunk at a time: one projection and
        one add into the fp32 stream per chunk whatever the number of groups, and F(x) itself
        (a (B, L, dim) tensor) never exists."""
        assert not self.drops, "the dropout mask covers F(x) as a whole"
        groups = self.head_groups(x)
        h = layer_norm_to(x, self.norm, matmul_dtype(x), backend=self.backend)  # (B, L, dim)
        heads_out = self._heads_buffer(x, len(groups))  # O: (B, L, heads*d), or None
        for heads in groups:
            out = self.attention.heads_output(
                h, key_valid, n_hashes=n_hashes, plan=plan, heads=heads,
                into=self._columns(heads_out, heads),
            )  # (B, L, h*d)  # fmt: skip
            heads_out = self._concatenated(heads_out, out, heads)
            del out
        del h
        self._project_into(y, heads_out, sign=1)

    def _heads_buffer(self, x: Tensor, n_groups: int) -> Tensor | None:
        """O, the concatenated heads (B, L, heads*d) in the matmuls' dtype, for several head
        groups to write their columns into; None for one group, whose output is O itself."""
        if n_groups == 1:
            return None
        B, L, _ = x.shape
        return x.new_empty(B, L, self.heads * self.head_dim, dtype=matmul_dtype(x))

    def _columns(self, heads_out: Tensor | None, heads: slice) -> Tensor | None:
        """Group `heads`' columns of O (B, L, h*d), a view."""
        if heads_out is None:
            return None
        return self.attention.head_columns(heads_out, heads)

    def _concatenated(self, heads_out: Tensor | None, out: Tensor, heads: slice) -> Tensor:
        """O with group `heads`' output O_g (B, L, h*d) in its columns (copied there unless
        the attention wrote it there); with one group, O_g."""
        if heads_out is None:
            return out
        cols = self._columns(heads_out, heads)
        if not same_elements(out, cols):
            cols.copy_(out)
        return heads_out

    def _project_into(self, y: Tensor, heads_out: Tensor, *, sign: int) -> None:
        """y += sign * (O W^T + b) in place, in the projection chunks (the forward adds, the
        recomputation subtracts the very same values)."""
        w, b = self.attention.to_out.weight, self.attention.to_out.bias
        for s in self.projection_chunks(y):  # the bias added with the product, in one pass
            stream_add.add_update(y[:, s], F.linear(heads_out[:, s], w), b, sign, self.backend)

    def forward(self, x: Tensor, key_valid: Tensor | None, *, n_hashes=None, plan=None) -> Tensor:
        out = None
        for heads in self.head_groups(x):
            out = add_part(out, self.group(x, heads, key_valid, n_hashes, plan))  # (B, L, dim)
        return self.dropout(out)

    def recompute_backward(
        self,
        x: Tensor,
        grad: Tensor,
        key_valid: Tensor | None,
        n_hashes: int | None,
        plan: dict,
        rng: RngState | None,
        *,
        y: Tensor,
        dx: Tensor,
    ) -> list[Tensor | None]:
        """Recompute F(x) head group by head group and differentiate it against `grad`, IN
        PLACE: each group's share of F(x) is subtracted from y (Y1 -> X1) and its dF/dx^T grad
        added into dx (dY2 -> dX2) as soon as it exists. Returns the parameter gradients in
        `self.parameters()` order.

        Only one head group's graph and output exist at a time: neither the sum of the
        groups' outputs nor a separate input gradient is kept (each an fp32 (B, L, dim)).
        With one group, exactly the forward's F(x) is subtracted (its dropout mask replayed).
        """
        x = x.detach().requires_grad_()
        if not self.drops:
            return self._recompute_in_chunks(x, grad, key_valid, n_hashes, plan, y=y, dx=dx)
        params = list(self.parameters())
        param_grads: list[Tensor | None] = [None] * len(params)
        scale: Tensor | None = None  # the forward's dropout: kept / (1 - p), replayed
        groups = self.head_groups(x)
        for heads in groups:
            with torch.enable_grad():  # x's gradient goes straight into dx (layer_norm_to)
                part = self.group(x, heads, key_valid, n_hashes, plan, grad_into=dx)
            # The forward's dropout input: the part itself, or (several groups) their fp32 sum.
            wide = torch.promote_types(part.dtype, torch.float32)
            dropped = part.dtype if len(groups) == 1 else wide
            if heads.start == 0:
                with replaying(rng):
                    kept = self.dropout(torch.ones_like(part, dtype=dropped)) != 0
                scale = kept.to(wide) / (1 - self.dropout.p)
            y -= (part.detach() * scale).to(dropped)
            grads = torch.autograd.grad(part, [x, *params], grad * scale, allow_unused=True)
            assert grads[0] is None  # it went into dx
            param_grads = [add_grads(a, b) for a, b in zip(param_grads, grads[1:])]
            del part, grads
        return param_grads

    def _recompute_in_chunks(
        self,
        x: Tensor,
        grad: Tensor,
        key_valid: Tensor | None,
        n_hashes: int | None,
        plan: dict,
        *,
        y: Tensor,
        dx: Tensor,
    ) -> list[Tensor | None]:
        """`recompute_backward` without dropout, the inverse of `add_into`: per head group, the
        heads' output O_g (B, L, h*d) is recomputed with its graph and kept in O; a projection
        chunk at a time, dO_g = grad W_g and dW_g = grad^T O_g are formed from the chunk of grad
        cast to the matmuls' dtype, and O_g's graph is differentiated and freed. Then
        O W^T + b is subtracted from y as `add_into` added it. So neither F(x) nor a
        low-precision copy of the whole grad exists (each (B, L, dim)), and only one group's
        graph at a time."""
        to_out = self.attention.to_out
        params = list(self.parameters())
        inner = [p for p in params if p is not to_out.weight and p is not to_out.bias]
        inner_grads: list[Tensor | None] = [None] * len(inner)
        w_grad = torch.zeros_like(to_out.weight)
        b_grad = torch.zeros_like(to_out.bias)
        groups = self.head_groups(x)
        heads_out = self._heads_buffer(x, len(groups))  # O: (B, L, heads*d), as add_into formed it
        for heads in groups:
            with torch.enable_grad():  # x's gradient goes straight into dx (layer_norm_to)
                out = self.group_heads(
                    x, heads, key_valid, n_hashes, plan, grad_into=dx,
                    into=self._columns(heads_out, heads),
                )  # (B, L, h*d)  # fmt: skip
            w, b = self.attention.out_projection(heads)  # (dim, h*d), (dim,) or None
            cols = self.attention.head_columns(w_grad, heads)
            d_out = torch.empty_like(out)  # (B, L, h*d)
            with torch.no_grad():
                heads_out = self._concatenated(heads_out, out.detach(), heads)
                w_low = w.to(out.dtype)  # (dim, h*d) in the matmuls' dtype
                for s in self.projection_chunks(x):
                    o_s = out[:, s].detach()  # (B, l, h*d)
                    g = grad[:, s].to(out.dtype)  # (B, l, dim)
                    d_out[:, s] = g @ w_low
                    cols += (g.flatten(0, 1).T @ o_s.flatten(0, 1)).to(cols.dtype)
                    if b is not None:
                        b_grad += column_sums(g.flatten(0, 1)).to(b_grad.dtype)
                    del o_s, g
                del w_low
            grads = torch.autograd.grad(out, [x, *inner], d_out, allow_unused=True)
            assert grads[0] is None  # it went into dx
            inner_grads = [add_grads(a, g) for a, g in zip(inner_grads, grads[1:])]
            del out, d_out, grads
        with torch.no_grad():
            self._project_into(y, heads_out, sign=-1)
        del heads_out
        by_param = {id(p): g for p, g in zip(inner, inner_grads)}
        by_param |= {id(to_out.weight): w_grad, id(to_out.bias): b_grad}
        return [by_param[id(p)] for p in params]


def add_part(out: Tensor | None, part: Tensor) -> Tensor:
    """The sum of head groups' parts so far: the first as it is, later ones added in fp32, so
    the forward pass and its recomputation sum alike."""
    return part if out is None else out.to(torch.promote_types(out.dtype, torch.float32)) + part


class FeedForwardBranch(nn.Module):
    """G(x) = Dropout(FeedForward(LayerNorm(x))), position-wise."""

    def __init__(self, cfg: ReformerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim)
        self.ff = FeedForward(cfg.dim, cfg.ff_dim, cfg.dropout, cfg.backend)
        self.dropout = dropout_layer(cfg.dropout)
        self.backend = cfg.backend

    def forward(self, x: Tensor, grad_into: Tensor | None = None) -> Tensor:
        """grad_into: the backward adds x's gradient into it (see `layer_norm_to`)."""
        h = layer_norm_to(x, self.norm, matmul_dtype(x), grad_into, self.backend)  # (B, L, dim)
        return self.dropout(self.ff(h))

    @property
    def drops(self) -> bool:
        """Whether the branch's dropout is active (its mask then covers the bias too, so the
        reversible passes update the stream with G(x) itself, not with `unbiased` and
        `stream_add.add_update`)."""
        return isinstance(self.dropout, nn.Dropout) and self.training

    def unbiased(self, x: Tensor, grad_into: Tensor | None = None) -> Tensor:
        """G(x) without the last matmul's bias (`ff.net[-1].bias`), in the matmuls' dtype,
        for the stream updates without an active dropout: (B, L, dim)."""
        h = layer_norm_to(x, self.norm, matmul_dtype(x), grad_into, self.backend)  # (B, L, dim)
        return F.linear(self.ff.hidden(h), self.ff.net[-1].weight)

    def add_into(self, y: Tensor, x: Tensor) -> None:
        """y += G(x) IN PLACE, without a graph (the reversible forward): y, x (B, l, dim)."""
        if not self.drops:
            stream_add.add_update(y, self.unbiased(x), self.ff.net[-1].bias, 1, self.backend)
        else:
            y += self(x)

    def recompute_backward(
        self, x: Tensor, grad: Tensor, *, y: Tensor, dx: Tensor
    ) -> list[Tensor | None]:
        """The inverse of `add_into` with its gradient, IN PLACE: y -= G(x) (the very values
        `add_into` added) and dx += dG/dx^T grad; returns the parameter gradients in
        `self.parameters()` order. x, grad, y, dx: (B, l, dim), a sequence chunk."""
        params = list(self.parameters())
        x = x.detach().requires_grad_()
        unbiased = not self.drops
        with torch.enable_grad():  # x's gradient goes straight into dx (layer_norm_to)
            out = self.unbiased(x, grad_into=dx) if unbiased else self(x, grad_into=dx)
        low = grad.to(out.dtype)  # (B, l, dim), as autograd would cast it
        grads = list(torch.autograd.grad(out, [x, *params], low, allow_unused=True))
        assert grads.pop(0) is None  # it went into dx
        if unbiased:  # the bias is not in the graph: db = 1^T grad
            bias = self.ff.net[-1].bias
            stream_add.add_update(y, out.detach(), bias, -1, self.backend)
            at = next(i for i, p in enumerate(params) if p is bias)
            grads[at] = column_sums(low.flatten(0, 1)).to(bias.dtype)
        else:
            y -= out.detach()
        return grads


class ReformerLM(nn.Module):
    """(B, N) int64 tokens -> (B, N, vocab) logits. See the module docstring."""

    def __init__(self, cfg: ReformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = AxialPositionalEmbedding(cfg.axial_shape, cfg.axial_dims)
        self.emb_dropout = dropout_layer(cfg.dropout)
        self.layers = nn.ModuleList(
            ReversibleLayer(AttentionBranch(cfg, kind, i), FeedForwardBranch(cfg), cfg.ff_chunks)
            for i, kind in enumerate(cfg.attention_per_layer)
        )
        self.norm = nn.LayerNorm(2 * cfg.dim)
        self.head = nn.Linear(2 * cfg.dim, cfg.vocab_size)
        # The residual streams' host buffers of `loss` with cfg.offload_streams (streamed.py).
        self.host_streams = HostStreams()

    # --- input checks ---------------------------------------------------------------
    def _check(self, tokens: Tensor, key_padding_mask: Tensor | None, n_hashes: int | None) -> None:
        cfg = self.cfg
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"tokens must be a (batch, seq) integer tensor, got "
                f"{tuple(tokens.shape)} {tokens.dtype}"
            )
        n = tokens.shape[1]
        if n == 0 or n > cfg.max_seq_len:
            raise ValueError(
                f"sequence length {n} must be in 1..max_seq_len={cfg.max_seq_len}: "
                f"raise max_seq_len (and axial_shape) or crop the input"
            )
        if not (tokens.is_cuda and torch.cuda.is_current_stream_capturing()):
            check_token_range(tokens, cfg.vocab_size)  # (a graph's caller checks each replay)
        if key_padding_mask is not None and (
            key_padding_mask.shape != tokens.shape or key_padding_mask.dtype != torch.bool
        ):
            raise ValueError(
                "key_padding_mask must be a bool tensor shaped like tokens (True = real token)"
            )
        if n_hashes is not None and (not isinstance(n_hashes, int) or n_hashes < 1):
            raise ValueError(f"n_hashes must be a positive integer, got {n_hashes!r}")

    # --- forward --------------------------------------------------------------------
    def streams(
        self,
        tokens: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        n_hashes: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The two residual streams after the last layer: (B, N) -> 2 x (B, N, dim)."""
        y1, y2 = self._padded_streams(tokens, key_padding_mask, n_hashes, grads_owned=False)
        N = tokens.shape[1]
        return y1[:, :N], y2[:, :N]

    def _padded_streams(
        self,
        tokens: Tensor,
        key_padding_mask: Tensor | None,
        n_hashes: int | None,
        grads_owned: bool,
    ) -> tuple[Tensor, Tensor]:
        """The streams at every position the layers ran on: (B, N) -> 2 x (B, L, dim), L the
        padded length. grads_owned: see `run_layers`; only for callers whose use of the
        streams is private."""
        x, key_valid = self._embedded(tokens, key_padding_mask, n_hashes)
        return run_layers(self.layers, x, x, key_valid, n_hashes, self.cfg.reversible, grads_owned)

    def _embedded(
        self, tokens: Tensor, key_padding_mask: Tensor | None, n_hashes: int | None
    ) -> tuple[Tensor, Tensor | None]:
        """The checked input embedded and padded: (B, N) -> x (B, L, d) and the keys' validity
        (B, L) (None when every key is real), L the padded length."""
        L, key_valid = self._padding(tokens, key_padding_mask, n_hashes)
        N = tokens.shape[1]
        x = self.token_emb(tokens) + self.pos_emb(N, tokens.device)  # (B, N, d)
        x = self.emb_dropout(x)
        if L != N:
            x = F.pad(x, (0, 0, 0, L - N))  # (B, L, d), zeros at padded positions
        return x, key_valid

    def _padding(
        self, tokens: Tensor, key_padding_mask: Tensor | None, n_hashes: int | None
    ) -> tuple[int, Tensor | None]:
        """Check the input; (padded length L, the keys' validity (B, L) or None when every key
        is real)."""
        self._check(tokens, key_padding_mask, n_hashes)
        N = tokens.shape[1]
        multiple = self.cfg.pad_multiple
        L = -(-N // multiple) * multiple
        if L == N:
            return L, key_padding_mask
        real = (
            key_padding_mask
            if key_padding_mask is not None
            else torch.ones_like(tokens, dtype=torch.bool)
        )
        return L, F.pad(real, (0, L - N), value=False)  # (B, L)

    def embed_chunk(self, tokens: Tensor, s: slice) -> Tensor:
        """The embedding at positions s of the padded input, without dropout: (B, N) tokens ->
        (B, s.stop - s.start, d), zero at positions >= N (the padding)."""
        N = tokens.shape[1]
        real = slice(min(s.start, N), min(s.stop, N))
        positions = torch.arange(real.start, real.stop, device=tokens.device)
        x = self.token_emb(tokens[:, real]) + self.pos_emb.at(positions)  # (B, l', d)
        return F.pad(x, (0, 0, 0, (s.stop - s.start) - (real.stop - real.start)))

    def features(self, y1: Tensor, y2: Tensor) -> Tensor:
        """h = LayerNorm([Y1; Y2]): 2 x (B, n, dim) -> (B, n, 2 * dim)."""
        return self.norm(torch.cat([y1, y2], dim=-1))

    def hidden(
        self,
        tokens: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        n_hashes: int | None = None,
    ) -> Tensor:
        """Final features before the vocabulary projection: (B, N) -> (B, N, 2 * dim)."""
        y1, y2 = self.streams(tokens, key_padding_mask=key_padding_mask, n_hashes=n_hashes)
        return self.features(y1, y2)

    def forward(
        self,
        tokens: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        n_hashes: int | None = None,
    ) -> Tensor:
        """(B, N) int64 -> (B, N, vocab) logits. `n_hashes` overrides the hash rounds."""
        return self.head(self.hidden(tokens, key_padding_mask=key_padding_mask, n_hashes=n_hashes))

    def loss(
        self,
        tokens: Tensor,
        targets: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        n_hashes: int | None = None,
        ignore_index: int = -100,
    ) -> LMLoss:
        """Cross-entropy of targets[:, t] at position t, `cfg.loss_chunk` positions at a time.

        The final norm, head and loss of each chunk are recomputed in the backward pass
        (`head_loss.chunked_head_loss`, reading the residual streams the reversible layers
        keep anyway), so neither the (B, N, 2 dim) features nor more than (B, chunk, vocab)
        logits exist at any moment, and the streams' gradients are written in place.
        """
        if targets.shape != tokens.shape:
            raise ValueError(
                f"targets {tuple(targets.shape)} must match tokens {tuple(tokens.shape)}"
            )
        if self.cfg.offload_streams:  # the streams in host memory, a chunk at a time on the device
            L, key_valid = self._padding(tokens, key_padding_mask, n_hashes)
            total, n_correct = streamed_loss(
                self, tokens, L, key_valid, targets, n_hashes, ignore_index
            )
        else:
            # The streams feed only the chunk losses below: their gradients are ours to overwrite.
            y1, y2 = self._padded_streams(tokens, key_padding_mask, n_hashes, grads_owned=True)
            total, n_correct = chunked_head_loss(
                y1, y2, targets, tokens.shape[1], norm=self.norm, head=self.head,
                chunk=self.cfg.loss_chunk, ignore_index=ignore_index, backend=self.cfg.backend,
            )  # fmt: skip
        n_tokens = (targets != ignore_index).sum()
        return LMLoss(total / n_tokens.clamp(min=1), n_tokens, n_correct)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def generate(
        self,
        prompt: Tensor,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(B, N) prompt -> (B, N + max_new_tokens) int64; cached decoding, see generation.py."""
        from .generation import generate

        return generate(
            self, prompt, max_new_tokens, temperature, top_k, top_p, use_cache, generator
        )
