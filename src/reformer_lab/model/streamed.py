"""The reversible layers and the loss with the residual streams in host memory (sec 3).

`ReformerConfig.offload_streams`: the four (B, L, dim) stream buffers (Y1, Y2, dY1, dY2) live in
host memory (`host_streams.py`) and pass through the device a sequence chunk at a time. What
stays on the device is what the attention needs whole: the projected heads, their output and
its gradient, in the matmuls' dtype.

A layer, Y1 = X1 + F(X2), Y2 = X2 + G(Y1), F = Attn(LN(.)), G = FF(LN(.)), splits into
position-wise work (LayerNorms, projections, the feed-forward, the stream updates, the loss)
and the attention proper, which needs every position. So each layer is one pass over the
chunks plus one attention call, and the passes of neighbouring layers share their chunks:

forward, layer i (qkv = LN(X2) [W_q; W_k; W_v]^T formed by the pass before):
    O = Attn(qkv)                                     on the device, whole; hashing kept
    per chunk: load X1, X2;  Y1 = X1 + O W_o^T + b_o;  Y2 = X2 + G(Y1);  store Y1, Y2;
               qkv_{i+1} = LN(Y2) [...]^T   (after the last layer: the chunk's loss)

backward, top down (dY = the loss's gradient, formed chunk by chunk in the first pass):
    per chunk: X2 = Y2 - G(Y1);  dY1 += dG/dY1^T dY2;  qkv = LN(X2) [...]^T;  dO = dY1 W_o
    O, dqkv = Attn and its backward from (qkv, dO)     on the device, head group by group
    per chunk: dW_o += dY1^T O;  X1 = Y1 - (O W_o^T + b_o);
               dX2 = dY2 + (LN and projection backward of dqkv, recomputing LN(X2))
               and, in the same chunk, the layer below's first step (X2' = X2 - G'(X1), ...)

So the host link carries, per layer and pass, at most four chunk loads and four stores (on
CUDA beside the compute: `host_streams.ChunkPass`); the forward's first pass forms the
embedding on the device and the backward's last differentiates it there. Two (B, L, ...) device buffers serve every layer: qkv (which the
attention's backward turns into dqkv, and the next pass into the layer below's qkv) and O
(in the backward dO first, which the attention's backward turns into O, and the next pass
into the layer below's dO). Numerically it is the same network as `reversible.py` (same
recomputation, same hashing kept from the forward); the sums differ in order (per-chunk
parameter gradients, per-chunk loss). Not supported: active dropout (its masks are not replayed here;
`ReformerConfig` refuses the combination).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..strided import same_elements
from . import host_streams, stream_add
from .feedforward import sequence_chunks
from .head_loss import chunk_loss, chunk_loss_backward
from .joint_projection import joint_projection
from .layer_norm import layer_norm_to, matmul_dtype
from .matmul_bias_grad import column_sums
from .reversible import add_grads


def streamed_loss(
    model: nn.Module,
    tokens: Tensor,
    L: int,
    key_valid: Tensor | None,
    targets: Tensor,
    n_hashes: int | None,
    ignore_index: int,
) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy fp32, correct argmax predictions int64) of targets (B, N) after
    `model` (a `ReformerLM`) on tokens (B, N) padded to length L, with the streams in host
    memory; differentiable w.r.t. every parameter of the model. The embedding, too, is formed
    and differentiated a chunk at a time, so no (B, L, dim) tensor of the streams' dtype is
    ever on the device."""
    run = _Streams(model, tokens, L, key_valid, targets, n_hashes, ignore_index)
    return _StreamedLoss.apply(run, *run.params)


class _StreamedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: _Streams, *params):
        device_type = run.tokens.device.type
        ctx.autocast = (
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        total, correct = run.forward()
        ctx.run = run
        ctx.mark_non_differentiable(correct)
        if any(ctx.needs_input_grad):
            # Through save_for_backward, so that saved-tensor hooks see every byte kept.
            ctx.plan_keys = [(i, k) for i, plan in enumerate(run.plans) for k in sorted(plan)]
            ctx.save_for_backward(*[run.plans[i][k] for i, k in ctx.plan_keys])
        run.plans = [{} for _ in run.plans]
        return total, correct

    @staticmethod
    def backward(ctx, grad_total, _):
        run: _Streams = ctx.run
        for (i, key), tensor in zip(ctx.plan_keys, ctx.saved_tensors):
            run.plans[i][key] = tensor
        enabled, dtype = ctx.autocast
        with torch.autocast(grad_total.device.type, dtype=dtype, enabled=enabled):
            run.backward(grad_total, ctx.autocast)
        return (None, *[run.grads.get(id(p)) for p in run.params])


def _copy_each(dsts: list[Tensor], srcs: tuple[Tensor, ...]) -> None:
    """dst.copy_(src) for each pair (in a function: a loop variable left holding the last
    source would keep it alive into the next head group)."""
    for dst, src in zip(dsts, srcs):
        dst.copy_(src)


class _Streams:
    """One call's state: the model's parts, the chunks, the host buffers, the kept hashing
    of each layer and the parameter gradients as they accumulate."""

    def __init__(self, model, tokens, L, key_valid, targets, n_hashes, ignore_index) -> None:
        self.model, self.layers, self.norm, self.head = model, model.layers, model.norm, model.head
        self.cfg = model.cfg
        self.tokens, self.key_valid, self.targets = tokens, key_valid, targets
        self.n, self.n_hashes, self.ignore_index = tokens.shape[1], n_hashes, ignore_index
        self.chunks = sequence_chunks(L, self.cfg.ff_chunks)
        dtype = model.token_emb.weight.dtype
        shape = (tokens.shape[0], L, self.cfg.dim)
        self.host = model.host_streams.buffers(shape, dtype, tokens.device)
        self.params = list(model.parameters())
        self.plans: list[dict] = [{} for _ in self.layers]
        self.grads: dict[int, Tensor] = {}

    # --- the pieces --------------------------------------------------------------------
    def _pass(self, *loads: str) -> host_streams.ChunkPass:
        """A pass over the chunks with the named host buffers loaded at each."""
        return host_streams.ChunkPass(
            self.model.host_streams, self.host, self.chunks, loads, self.tokens.device
        )

    def _add_grads(self, params, grads) -> None:
        for p, g in zip(params, grads):
            if g is not None:
                self.grads[id(p)] = add_grads(self.grads.get(id(p)), g)

    def _project(self, layer, x2: Tensor) -> Tensor:
        """LN(x2) [W_q; W_k; W_v]^T for a chunk (B, l, dim) -> (B, l, n * heads*d), as
        `joint_projection` forms it (one matmul of the concatenated weights)."""
        attn = layer.f.attention
        h = layer_norm_to(x2, layer.f.norm, matmul_dtype(x2), backend=self.cfg.backend)
        return F.linear(h, torch.cat(attn.projection_weights()))

    def _output_gradient(self, layer, dy1: Tensor) -> Tensor:
        """dO = dY1 W_o for a chunk, in the matmuls' dtype: (B, l, dim) -> (B, l, heads*d)."""
        w = layer.f.attention.to_out.weight  # (dim, heads*d)
        dt = matmul_dtype(dy1)
        return dy1.to(dt) @ w.to(dt)

    def _project_into(self, layer, y1: Tensor, o: Tensor, sign: int) -> None:
        """y1 += sign (O W_o^T + b_o) for a chunk, in place: the forward adds, the
        recomputation subtracts, the very same values."""
        to_out = layer.f.attention.to_out
        stream_add.add_update(y1, F.linear(o, to_out.weight), to_out.bias, sign, self.cfg.backend)

    def _groups(self, layer) -> list[slice]:
        """Head groups computed one at a time: `attn_chunks` of them, one head a group with
        "auto" (what is beside a group on the device is already ~4 stream-sizes of bf16)."""
        heads = layer.f.heads
        chunks = self.cfg.attn_chunks
        return sequence_chunks(heads, heads if chunks == "auto" else chunks)

    def _attend(self, layer, qkv: Tensor, out: Tensor, plan: dict) -> None:
        """O = Attn(qkv) into out (B, L, heads*d), head group by head group; no graph."""
        attn = layer.f.attention
        for heads in self._groups(layer):
            cols = attn.head_columns(out, heads)
            o = attn.attend_heads(
                *attn.projected_columns(qkv, heads), self.key_valid,
                n_hashes=self.n_hashes, plan=plan, heads=heads, into=cols,
            )  # fmt: skip
            if not same_elements(o, cols):
                cols.copy_(o)
            del o

    def _attend_backward(self, layer, qkv: Tensor, od: Tensor, plan: dict) -> None:
        """Attn(qkv) and its backward against dO, head group by head group, IN PLACE: od
        (B, L, heads*d) holds dO on entry and O on return, and qkv takes its own gradient. A
        group's columns of qkv and of dO are read by that group's attention only, so once it
        is differentiated they take its gradient and its output (formed aside meanwhile)."""
        attn = layer.f.attention
        for heads in self._groups(layer):
            cols = [c for c in attn.projected_columns(qkv, heads) if c is not None]
            leaves = [c.detach().requires_grad_() for c in cols]
            q, v = leaves[0], leaves[-1]
            k = leaves[1] if len(leaves) == 3 else None
            od_cols = attn.head_columns(od, heads)  # dO of the group, then its O
            with torch.enable_grad():
                o = attn.attend_heads(
                    q, k, v, self.key_valid, n_hashes=self.n_hashes, plan=plan, heads=heads,
                    into=torch.empty_like(od_cols),
                )  # fmt: skip
            grads = torch.autograd.grad(o, leaves, od_cols)
            with torch.no_grad():
                od_cols.copy_(o)
                del o, leaves
                _copy_each(cols, grads)
            del grads

    def _input_side_backward(self, layer, x2: Tensor, dx2: Tensor, dqkv: Tensor) -> None:
        """The attention branch's LN and q/k/v projection differentiated against dqkv for a
        chunk: x2's gradient ADDED into dx2 (dY2 -> dX2), the parameters' kept."""
        attn, norm = layer.f.attention, layer.f.norm
        weights = attn.projection_weights()
        with torch.enable_grad():
            h = layer_norm_to(x2, norm, matmul_dtype(x2), grad_into=dx2, backend=self.cfg.backend)
            parts = joint_projection(h, *weights)
        widths = [w.shape[0] for w in weights]
        params = [norm.weight, norm.bias, *weights]
        self._add_grads(params, torch.autograd.grad(parts, params, dqkv.split(widths, dim=-1)))

    def _output_side_grads(self, layer, o: Tensor, dy1: Tensor) -> None:
        """dW_o += dY1^T O and db_o += 1^T dY1 for a chunk, dY1 cast to the matmuls' dtype."""
        to_out = layer.f.attention.to_out
        g = dy1.to(o.dtype).flatten(0, 1)  # (B*l, dim)
        dw = (g.T @ o.flatten(0, 1)).to(to_out.weight.dtype)
        db = column_sums(g).to(to_out.bias.dtype)
        self._add_grads([to_out.weight, to_out.bias], [dw, db])

    def _first_backward_step(self, layer, s: slice, y1, y2, dy1, dy2, qkv, od) -> None:
        """A layer's backward up to its attention, for chunk s of its outputs and their
        gradients (B, l, dim) each: X2 = Y2 - G(Y1) into y2 and dY1 += dG/dY1^T dY2 into dy1
        (G's parameter gradients kept); then the attention's input qkv = LN(X2) [...]^T and
        output gradient dO = dY1 W_o into chunk s of qkv and od."""
        grads = layer.g.recompute_backward(y1, dy2, y=y2, dx=dy1)
        self._add_grads(list(layer.g.parameters()), grads)
        qkv[:, s] = self._project(layer, y2)
        od[:, s] = self._output_gradient(layer, dy1)

    def _embedding_backward(self, s: slice, dx: Tensor) -> None:
        """The embedding's parameter gradients from dX1 + dX2 at chunk s (B, l, dim)."""
        params = [*self.model.token_emb.parameters(), *self.model.pos_emb.parameters()]
        with torch.enable_grad():
            x = self.model.embed_chunk(self.tokens, s)
        self._add_grads(params, torch.autograd.grad(x, params, dx))

    def _loss_slices(self, s: slice) -> list[tuple[slice, slice]]:
        """(positions, the same positions within chunk s) of each loss chunk in s: only the
        first n positions count, `cfg.loss_chunk` at a time."""
        end = min(s.stop, self.n)
        step = self.cfg.loss_chunk
        return [
            (slice(a, min(a + step, end)), slice(a - s.start, min(a + step, end) - s.start))
            for a in range(s.start, end, step)
        ]

    # --- the passes ----------------------------------------------------------------------
    def forward(self) -> tuple[Tensor, Tensor]:
        """The forward pass (see the module docstring); fills `plans` with the hashing."""
        B, L, _ = self.host["y1"].shape
        device = self.tokens.device
        embedded = self.model.embed_chunk(self.tokens, self.chunks[0])
        dt = self.matmul_dtype = matmul_dtype(embedded)  # the backward's buffers take it too
        first = self.layers[0].f.attention
        width = len(first.projection_weights()) * first.heads * first.head_dim
        qkv = torch.empty(B, L, width, dtype=dt, device=device)
        out = torch.empty(B, L, first.heads * first.head_dim, dtype=dt, device=device)
        for s in self.chunks:
            qkv[:, s] = self._project(self.layers[0], self.model.embed_chunk(self.tokens, s))
        total = torch.zeros((), dtype=torch.promote_types(embedded.dtype, torch.float32),
                            device=device)  # fmt: skip
        correct = torch.zeros((), dtype=torch.long, device=device)
        del embedded
        for i, layer in enumerate(self.layers):
            self._attend(layer, qkv, out, self.plans[i])
            above = self.layers[i + 1] if i + 1 < len(self.layers) else None
            chunks = self._pass() if i == 0 else self._pass("y1", "y2")
            for s, loaded in chunks:
                if i == 0:  # X1 = X2 = the embedding
                    y1 = self.model.embed_chunk(self.tokens, s)
                    y2 = y1.clone()
                else:
                    y1, y2 = loaded["y1"], loaded["y2"]
                self._project_into(layer, y1, out[:, s], 1)
                layer.g.add_into(y2, y1)
                chunks.store("y1", s, y1)
                chunks.store("y2", s, y2)
                if above is not None:
                    qkv[:, s] = self._project(above, y2)
                else:
                    for p, c in self._loss_slices(s):
                        part, hits = chunk_loss(
                            y1[:, c], y2[:, c], self.targets[:, p], self.norm, self.head,
                            self.cfg.backend, self.ignore_index,
                        )  # fmt: skip
                        total += part
                        correct += hits
                del y1, y2, loaded
        return total, correct

    def backward(self, grad_total: Tensor, autocast: tuple[bool, torch.dtype]) -> None:
        """The backward pass; the parameters' gradients go into `grads`."""
        top = self.layers[-1]
        B, L, _ = self.host["y1"].shape
        device, dt = self.tokens.device, self.matmul_dtype
        attn = top.f.attention
        qkv = torch.empty(B, L, len(attn.projection_weights()) * attn.heads * attn.head_dim,
                          dtype=dt, device=device)  # fmt: skip
        od = torch.empty(B, L, attn.heads * attn.head_dim, dtype=dt, device=device)  # dO, O
        head_params = [*self.norm.parameters(), *self.head.parameters()]
        chunks = self._pass("y1", "y2")
        for s, loaded in chunks:  # the loss, then the top layer's first step
            y1, y2 = loaded["y1"], loaded["y2"]
            dy1, dy2 = torch.zeros_like(y1), torch.zeros_like(y2)  # padding gets 0
            for p, c in self._loss_slices(s):
                grads = chunk_loss_backward(
                    y1[:, c], y2[:, c], self.targets[:, p], grad_total, (dy1[:, c], dy2[:, c]),
                    self.norm, self.head, self.cfg.backend, self.ignore_index, autocast=autocast,
                )  # fmt: skip
                self._add_grads(head_params, grads)
            self._first_backward_step(top, s, y1, y2, dy1, dy2, qkv, od)
            chunks.store("y2", s, y2)
            chunks.store("dy1", s, dy1)
            chunks.store("dy2", s, dy2)
            del y1, y2, dy1, dy2, loaded
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            self._attend_backward(layer, qkv, od, self.plans[i])  # od: dO -> O; qkv -> dqkv
            self.plans[i] = {}
            below = self.layers[i - 1] if i > 0 else None
            chunks = self._pass("y2", "dy1", "dy2", *(("y1",) if below is not None else ()))
            for s, loaded in chunks:
                x2, dy1, dy2 = loaded["y2"], loaded["dy1"], loaded["dy2"]
                self._output_side_grads(layer, od[:, s], dy1)
                self._input_side_backward(layer, x2, dy2, qkv[:, s])  # dy2 is now dX2
                if below is None:
                    self._embedding_backward(s, dy1 + dy2)
                    del x2, dy1, dy2, loaded
                    continue
                y1 = loaded["y1"]
                self._project_into(layer, y1, od[:, s], -1)  # y1 is now X1: the layer below's Y1
                # The chunk's O and dqkv are used: the layer below's dO and qkv take their place.
                self._first_backward_step(below, s, y1, x2, dy1, dy2, qkv, od)
                chunks.store("y1", s, y1)
                chunks.store("y2", s, x2)
                chunks.store("dy1", s, dy1)
                chunks.store("dy2", s, dy2)
                del y1, x2, dy1, dy2, loaded
