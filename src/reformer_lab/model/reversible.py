"""Reversible residual layers (sec 3, after RevNets, Gomez et al. 2017).

Each layer maps (X1, X2) to

    Y1 = X1 + F(X2)        F = attention branch
    Y2 = X2 + G(Y1)        G = feed-forward branch

and its inputs are recovered from its outputs, X2 = Y2 - G(Y1), X1 = Y1 - F(X2), so the
backward pass recomputes each layer from the one above instead of storing activations. The
custom autograd function below keeps only the last layer's output, plus, per layer, the LSH
hashing of the forward pass (the int32 sort order per token, head and round; with the heads in
groups, the int16 bucket ids it is re-formed from) and the RNG state before each branch, so
the recomputation sees the same buckets and dropout masks.

Parameters are inputs of the function and their gradients are returned from its backward
(not accumulated behind autograd's back), so they get gradients even when the inputs need
none, and DistributedDataParallel sees each gradient become ready exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..strided import byte_span, no_self_overlap
from .feedforward import apply_chunked, sequence_chunks


class RngState:
    """The global CPU (and CUDA) RNG state at one moment, to replay dropout masks later."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def replaying(state: RngState | None) -> contextlib.AbstractContextManager:
    return state.replay() if state is not None else contextlib.nullcontext()


@dataclass
class LayerRecord:
    """What a layer's backward needs to recompute its forward exactly."""

    plan: dict = field(default_factory=dict)  # attention's hashing, per head group
    rng_f: RngState | None = None
    rng_g: RngState | None = None


class ReversibleLayer(nn.Module):
    """One (attention, feed-forward) pair acting on the two residual streams."""

    def __init__(self, f: nn.Module, g: nn.Module, ff_chunks: int) -> None:
        """f: the attention branch (it must offer `add_into`, `drops` and
        `recompute_backward`); g: position-wise, applied a sequence chunk at a time by its
        `add_into` and `recompute_backward` (`FeedForwardBranch`)."""
        super().__init__()
        self.f, self.g, self.ff_chunks = f, g, ff_chunks

    @property
    def uses_rng(self) -> bool:
        return self.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.modules())

    def forward(
        self,
        x1: Tensor,
        x2: Tensor,
        key_valid: Tensor | None,
        n_hashes: int | None,
        record: LayerRecord | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(Y1, Y2) from (X1, X2), each (B, L, dim). Fills `record` when given.

        With a record (the reversible forward, no graph) X1 and X2 are the caller's own buffers
        and become Y1 and Y2 IN PLACE: the branches' outputs are added into them a chunk at a
        time (`f.add_into`, G per FF chunk), in the chunks the backward pass recomputes them
        in, so X2 = Y2 - G(Y1) and X1 = Y1 - F(X2) subtract the very values added, and neither
        F(X2) nor G(Y1) exists whole.
        """
        if record is not None and self.uses_rng:
            record.rng_f = RngState(x1.device)
        plan = None if record is None else record.plan
        if record is not None and not self.f.drops:
            y1 = x1
            self.f.add_into(y1, x2, key_valid, n_hashes=n_hashes, plan=plan)
        else:
            y1 = x1 + self.f(x2, key_valid, n_hashes=n_hashes, plan=plan)
        if record is not None and self.uses_rng:
            record.rng_g = RngState(x1.device)
        if record is None:
            return y1, x2 + apply_chunked(self.g, y1, self.ff_chunks)
        y2 = x2
        for s in sequence_chunks(y1.shape[1], self.ff_chunks):
            self.g.add_into(y2[:, s], y1[:, s])  # (B, l, dim)
        return y1, y2

    def backward_pass(
        self,
        y1: Tensor,
        y2: Tensor,
        dy1: Tensor,
        dy2: Tensor,
        key_valid: Tensor | None,
        n_hashes: int | None,
        record: LayerRecord,
    ) -> list[Tensor | None]:
        """Turn (Y1, Y2, dY1, dY2) into (X1, X2, dX1, dX2) IN PLACE; return parameter gradients.

        The four (B, L, dim) buffers belong to the caller and are overwritten, so the backward
        pass holds four residual-stream tensors whatever the depth. Gradients are returned
        for f's parameters, then g's.
        """
        g_params = list(self.g.parameters())
        g_grads: list[Tensor | None] = [None] * len(g_params)
        # X2 = Y2 - G(Y1) and dY1 += dG/dY1^T dY2. G is position-wise: recompute and
        # differentiate it one sequence chunk at a time (sec 3, chunking).
        with replaying(record.rng_g):
            for s in sequence_chunks(y1.shape[1], self.ff_chunks):
                # y2 now holds x2 on this chunk, and dy1 has G's share of the gradient
                grads = self.g.recompute_backward(y1[:, s], dy2[:, s], y=y2[:, s], dx=dy1[:, s])
                g_grads = [add_grads(a, b) for a, b in zip(g_grads, grads)]
                del grads
        # X1 = Y1 - F(X2) and dX2 = dY2 + dF/dX2^T dX1, with dX1 = dY1 (now complete); the
        # branch recomputes itself head group by head group (AttentionBranch), writing into
        # y1 (now x1) and dy2 (now dx2) as it goes.
        f_grads = self.f.recompute_backward(
            y2, dy1, key_valid, n_hashes, record.plan, record.rng_f, y=y1, dx=dy2
        )
        return [*f_grads, *g_grads]


def add_grads(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


class _ReversibleFunction(torch.autograd.Function):
    """Runs all layers without storing activations; the backward walks them in reverse."""

    @staticmethod
    def forward(ctx, x1, x2, layers, key_valid, n_hashes, grads_owned, *params):
        device_type = x1.device.type
        ctx.autocast = (
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        records = [LayerRecord() for _ in layers]
        with torch.no_grad():
            x1, x2 = x1.clone(), x2.clone()  # the streams' buffers, which every layer updates
            for layer, record in zip(layers, records):
                x1, x2 = layer(x1, x2, key_valid, n_hashes, record)
        # Plans go through save_for_backward so that saved-tensor hooks see every byte kept.
        plan_keys = [(i, key) for i, r in enumerate(records) for key in sorted(r.plan)]
        plan_tensors = [records[i].plan[key] for i, key in plan_keys]
        key_valid_saved = [key_valid] if key_valid is not None else []
        ctx.save_for_backward(x1, x2, *key_valid_saved, *plan_tensors)
        for record in records:
            record.plan = {}
        ctx.layers, ctx.records, ctx.plan_keys = layers, records, plan_keys
        ctx.n_hashes, ctx.has_key_valid = n_hashes, key_valid is not None
        ctx.grads_owned = grads_owned
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):
        # The layers' backward overwrites these four buffers in place; the saved outputs
        # have no other reader (they only feed a concatenation), so they are reused as they
        # are. The incoming gradients are copied once, unless the caller said they are its
        # own (`grads_owned`): then they are overwritten too. Calling backward twice through
        # this function (retain_graph=True) is therefore not supported.
        y1, y2, *rest = ctx.saved_tensors
        if not (ctx.grads_owned and writable(dy1, dy2)):
            dy1, dy2 = dy1.clone(), dy2.clone()
        key_valid = rest.pop(0) if ctx.has_key_valid else None
        for (i, key), tensor in zip(ctx.plan_keys, rest):
            ctx.records[i].plan[key] = tensor
        device_type = y1.device.type
        enabled, dtype = ctx.autocast
        param_grads: list[list[Tensor | None]] = []
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for layer, record in zip(reversed(ctx.layers), reversed(ctx.records)):
                grads = layer.backward_pass(y1, y2, dy1, dy2, key_valid, ctx.n_hashes, record)
                param_grads.append(grads)
                record.plan = {}
        flat = [g for grads in reversed(param_grads) for g in grads]
        return (dy1, dy2, None, None, None, None, *flat)


def writable(a: Tensor, b: Tensor) -> bool:
    """True when a and b can be overwritten as two separate buffers: no element of either is
    stored twice (as in an expanded gradient) and they share none, either because their
    memory ranges are apart or because they are the two halves of one (..., 2 d) tensor along
    the last dim (the gradient of `cat([y1, y2], -1)`)."""
    if not (no_self_overlap(a) and no_self_overlap(b)):
        return False
    (a0, a1), (b0, b1) = byte_span(a), byte_span(b)
    if a1 <= b0 or b1 <= a0:
        return True
    d = a.shape[-1]
    halves = a.shape == b.shape and a.stride() == b.stride() and a.stride(-1) == 1
    return (
        halves and a.dim() >= 2 and a.stride(-2) >= 2 * d and abs(b0 - a0) == d * a.element_size()
    )


def layer_parameters(layers: nn.ModuleList) -> list[nn.Parameter]:
    """Parameters in the order `_ReversibleFunction.backward` returns their gradients."""
    return [p for layer in layers for branch in (layer.f, layer.g) for p in branch.parameters()]


def run_layers(
    layers: nn.ModuleList,
    x1: Tensor,
    x2: Tensor,
    key_valid: Tensor | None,
    n_hashes: int | None,
    reversible: bool,
    grads_owned: bool = False,
) -> tuple[Tensor, Tensor]:
    """All layers, reversibly (no stored activations) or as an ordinary residual network.

    grads_owned: the caller promises that the outputs' gradients are buffers nobody else
    reads (true of `ReformerLM.loss`, whose chunked head is their only consumer), so the
    reversible backward may work in them instead of in copies (2 x (B, L, dim) less memory).
    """
    params = layer_parameters(layers)
    needs_grad = torch.is_grad_enabled() and (
        x1.requires_grad or x2.requires_grad or any(p.requires_grad for p in params)
    )
    if reversible and needs_grad:
        return _ReversibleFunction.apply(x1, x2, layers, key_valid, n_hashes, grads_owned, *params)
    for layer in layers:
        x1, x2 = layer(x1, x2, key_valid, n_hashes)
    return x1, x2
