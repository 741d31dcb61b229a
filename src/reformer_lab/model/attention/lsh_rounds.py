"""Hash rounds computed one at a time and merged as in appendix A, in O(B H L d) memory.

Round r sorts the heads' vectors by its order, runs chunked attention and unsorts, giving
o_r (B, H, L, d) and its log-normaliser z_r (B, H, L). The output is

    o = sum_r w_r o_r,   w_r = exp(z_r - Z),   Z = logsumexp_r z_r.

`_RoundsFunction` keeps only q, k, v, the sort orders, o and every z_r for the backward pass
and recomputes one round at a time there, so memory does not grow with the number of rounds.
With g = <do, o> and g_r = <do, o_r>, the chain rule through the merge gives

    d o_r = w_r do,        d z_r = w_r (g_r - g).

On CUDA with Triton (backend 'auto' or 'triton') and without the duplicate correction, both
passes run as fused round kernels instead (`reformer_lab.kernels.lsh_rounds_forward` and
`lsh_rounds_backward`): rows are gathered through the order inside the kernels and merged at
their original positions, with no sorted copies, unsorting or elementwise merge in torch.
The torch path below stays the CPU path and the reference they are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..fused import triton_allowed
from .backend import chunked_attention
from .chunked import look_back, normalize_keys


@dataclass
class HashRounds:
    """Everything about the hashing that a forward and its recomputation share."""

    order: Tensor  # (B, H, R, L) int32 or int64: positions sorted by (bucket, position), per round
    key_valid: Tensor | None  # (B, L) bool
    buckets: Tensor | None  # (B, H, R, L), only when keys of other buckets are masked
    chunk_size: int
    causal: bool
    dedup: bool  # appendix A's correction for keys seen in several rounds
    backend: str

    @property
    def n_rounds(self) -> int:
        return self.order.shape[2]


def wide(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype: fp32, or fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def inverse_permutation(order: Tensor) -> Tensor:
    """undo[..., order[..., s]] = s for permutations along the last dim."""
    undo = torch.empty_like(order)
    slots = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return undo.scatter_(-1, order, slots)


def duplicate_correction(order: Tensor, r: int, chunk_size: int, dtype: torch.dtype) -> Tensor:
    """Appendix A's correction for keys reached in several hash rounds, for round r.

    For query i and key j in round r's window, N_ij counts the rounds r' in which j lies in
    chunk(i, r') or chunk(i, r') - 1; the score gets -log N_ij, so the merged attention counts
    each (i, j) pair once. Returns the bias (B*H, n, C, 2C) in `dtype`.
    """
    B, H, R, L = order.shape
    C, n = chunk_size, L // chunk_size
    order = order.long()
    chunk_of = inverse_permutation(order) // C  # (B, H, R, L): chunk of each position per round
    slots = order[:, :, r]  # (B, H, L): the positions in round r's sorted slots
    counts = torch.zeros(B * H, n, C, 2 * C, dtype=torch.int32, device=order.device)
    for r2 in range(R):
        q_loc = chunk_of[:, :, r2].gather(2, slots).reshape(B * H, n, C)  # chunk in round r2
        k_loc = look_back(q_loc, fill=-2)  # (B*H, n, 2C)
        diff = q_loc[..., :, None] - k_loc[..., None, :]  # (B*H, n, C, 2C)
        counts += ((diff == 0) | (diff == 1)).int()
    return -torch.log(counts.clamp(min=1).to(dtype))


def gather_rows(x: Tensor, order: Tensor) -> Tensor:
    """x[b, h, order[b, h, s]] for every slot s: (B, H, L, d), (B, H, L) -> (B*H, L, d).

    Reads whole rows by one index each. The projections give (B, L, H, d) memory viewed as
    (B, H, L, d); that layout is read as it is, without a transposed copy.
    """
    B, H, L, d = x.shape
    b = torch.arange(B, device=x.device)[:, None, None]
    h = torch.arange(H, device=x.device)[None, :, None]
    if x.transpose(1, 2).is_contiguous():
        rows = x.transpose(1, 2).reshape(B * L * H, d)  # a view: memory order (b, l, h)
        index = (b * L + order) * H + h
    else:
        rows = x.contiguous().view(B * H * L, d)  # memory order (b, h, l)
        index = (b * H + h) * L + order
    return rows.index_select(0, index.reshape(-1)).view(B * H, L, d)


def attend_round(
    q: Tensor, k: Tensor, v: Tensor, rounds: HashRounds, r: int
) -> tuple[Tensor, Tensor]:
    """One hash round: (B, H, L, d) x3 -> o_r (B, H, L, d) and z_r (B, H, L) fp32."""
    B, H, L, d = q.shape
    order = rounds.order[:, :, r].long()  # (B, H, L)
    valid = None
    if rounds.key_valid is not None:
        valid = rounds.key_valid[:, None, :].expand(B, H, L).gather(2, order).reshape(B * H, L)
    buckets = None
    if rounds.buckets is not None:
        buckets = rounds.buckets[:, :, r].gather(2, order).reshape(B * H, L)
    bias = None
    if rounds.dedup and rounds.n_rounds > 1:
        bias = duplicate_correction(rounds.order, r, rounds.chunk_size, wide(q.dtype))
    out, lse = chunked_attention(
        gather_rows(q, order),
        gather_rows(k, order),
        gather_rows(v, order),
        order.reshape(B * H, L),
        rounds.chunk_size,
        scale=d**-0.5,
        causal=rounds.causal,
        key_valid=valid,
        buckets=buckets,
        bias=bias,
        backend=rounds.backend,
    )  # (B*H, L, d), (B*H, L) in sorted order
    # Undo the sort: position p of head (b, h) sits in slot undo[b, h, p].
    undo = inverse_permutation(order) + torch.arange(B * H, device=q.device).view(B, H, 1) * L
    undo = undo.reshape(-1)  # (B*H*L,) flat slot of each position
    out = out.reshape(B * H * L, d).index_select(0, undo).view(B, H, L, d)
    return out, lse.reshape(-1).index_select(0, undo).view(B, H, L)


def merge_rounds(q: Tensor, k: Tensor, v: Tensor, rounds: HashRounds) -> tuple[Tensor, Tensor]:
    """o (B, H, L, d) in fp32 and every z_r (B, H, R, L), one round in memory at a time."""
    # Running weighted mean of the o_r with weights exp(z_r - top) summing to `mass`: the
    # max is kept apart from the mass, because logaddexp of two values near -1e5 (a query that
    # only sees itself) resolves only ~0.008 in fp32 and would skew the round weights.
    out, top, mass, lses = None, None, None, []
    for r in range(rounds.n_rounds):
        o_r, z_r = attend_round(q, k, v, rounds, r)
        lses.append(z_r)
        if out is None:
            out, top, mass = o_r.to(wide(o_r.dtype)), z_r, torch.ones_like(z_r)
            continue
        new_top = torch.maximum(top, z_r)
        m_old = mass * torch.exp(top - new_top)  # (B, H, L)
        m_new = torch.exp(z_r - new_top)
        mass = m_old + m_new
        out = (out * m_old[..., None] + o_r * m_new[..., None]) / mass[..., None]
        top = new_top
    assert out is not None
    return out, torch.stack(lses, dim=2)


USE_FUSED_ROUNDS = True
"""False computes every call round by round with sorted copies (benchmarks compare the two)."""
FUSED_ON_CPU_UNDER_INTERPRETER = False
"""Tests set this to run the fused kernels on CPU tensors under TRITON_INTERPRET=1."""


def fused_kernels_usable(q: Tensor, k: Tensor | None, v: Tensor, rounds: HashRounds) -> bool:
    """True when the fused round kernels compute this call (see the module docstring)."""
    k = q if k is None else k  # shared-QK keys have q's shape and dtype
    if not USE_FUSED_ROUNDS or not triton_allowed(
        q, rounds.backend, FUSED_ON_CPU_UNDER_INTERPRETER
    ):
        return False
    if rounds.dedup and rounds.n_rounds > 1:  # the duplicate correction is a score bias
        return False
    from reformer_lab import kernels

    try:
        kernels.check_rounds_inputs(
            q, k, v, rounds.order, rounds.chunk_size, rounds.key_valid, rounds.buckets
        )
    except ValueError:  # a shape, dtype or option the kernels do not take
        return False
    return True


def _fused_options(q: Tensor, rounds: HashRounds) -> dict:
    return dict(
        chunk_size=rounds.chunk_size,
        scale=q.shape[-1] ** -0.5,
        causal=rounds.causal,
        key_valid=rounds.key_valid,
        buckets=rounds.buckets,
    )


class _RoundsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rounds: HashRounds, fused: bool, into: Tensor | None):
        ctx.rounds = rounds
        ctx.fused = fused  # fused_kernels_usable(q, k, v, rounds), decided by the caller
        if ctx.fused:
            from reformer_lab.kernels import lsh_rounds_forward

            out, lses, stats = lsh_rounds_forward(
                q, k, v, rounds.order, stats=True, out=into, **_fused_options(q, rounds)
            )  # (B, H, L, d) in v's dtype, (B, H, R, L), 2 x (B, H, R, L)
            ctx.save_for_backward(q, k, v, out, lses, rounds.order, *stats)
            return out
        device_type = q.device.type
        ctx.autocast = (
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        with torch.no_grad():
            out, lses = merge_rounds(q, k, v, rounds)
        out = _written(out.to(v.dtype), into)
        ctx.save_for_backward(q, k, v, out, lses, rounds.order)
        return out

    @staticmethod
    def backward(ctx, dout):
        if ctx.fused:
            from reformer_lab.kernels import lsh_rounds_backward

            q, k, v, out, lses, order, *stats = ctx.saved_tensors
            grads = lsh_rounds_backward(
                q, k, v, order, out=out, lse=lses, stats=tuple(stats), dout=dout,
                **_fused_options(q, ctx.rounds),
            )  # fmt: skip
            return (*grads, None, None, None)
        q, k, v, out, lses, order = ctx.saved_tensors
        rounds = ctx.rounds
        rounds.order = order
        enabled, dtype = ctx.autocast
        weights = torch.softmax(lses, dim=2)  # (B, H, R, L): exact even for lse ~ -1e5
        acc_dtype = wide(dout.dtype)
        g = (dout.to(acc_dtype) * out.to(acc_dtype)).sum(-1)  # (B, H, L)
        grads = [torch.zeros_like(x, dtype=wide(x.dtype)) for x in (q, k, v)]
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        for r in range(rounds.n_rounds):
            with torch.enable_grad(), torch.autocast(q.device.type, dtype=dtype, enabled=enabled):
                o_r, z_r = attend_round(*leaves, rounds, r)
            w = weights[:, :, r]  # (B, H, L)
            g_r = (dout.to(acc_dtype) * o_r.detach().to(acc_dtype)).sum(-1)  # (B, H, L)
            d_o = (dout.to(acc_dtype) * w[..., None]).to(o_r.dtype)
            d_z = (w * (g_r - g)).to(z_r.dtype)
            round_grads = torch.autograd.grad([o_r, z_r], leaves, [d_o, d_z], allow_unused=True)
            for acc, grad in zip(grads, round_grads):
                if grad is not None:
                    acc += grad
            del o_r, z_r, round_grads
        return (grads[0].to(q.dtype), grads[1].to(k.dtype), grads[2].to(v.dtype), None, None, None)


def attend_all_rounds(
    q: Tensor, k: Tensor | None, v: Tensor, rounds: HashRounds, into: Tensor | None = None
) -> Tensor:
    """Multi-round LSH attention: (B, H, L, d) queries, keys, values -> (B, H, L, d).

    k = None: the shared-QK keys, q normalised (sec 2). The fused kernels form them from the
    rows of q as they read them, so no key tensor is stored for the backward pass and the
    keys' gradient reaches dq inside the kernels; the torch path forms them here.

    into: a (B, H, L, d) tensor of v's dtype (any strides) that receives the output, which is
    then returned as `into` itself: a head group's columns of the (B, L, heads*d) concatenated
    heads, so that they exist once, not also as the group's own tensor.
    """
    fused = fused_kernels_usable(q, k, v, rounds)  # once: it checks every input
    if into is not None and (into.shape != v.shape or into.dtype != v.dtype):
        raise ValueError(
            f"into must be {v.dtype} {tuple(v.shape)}; got {into.dtype} {tuple(into.shape)}"
        )
    if k is None and not fused:
        k = normalize_keys(q)
    needs_grad = q.requires_grad or v.requires_grad or (k is not None and k.requires_grad)
    if torch.is_grad_enabled() and needs_grad:
        return _RoundsFunction.apply(q, k, v, rounds, fused, into)
    if fused:
        from reformer_lab.kernels import lsh_rounds_forward

        with torch.no_grad():
            options = _fused_options(q, rounds)
            return lsh_rounds_forward(q, k, v, rounds.order, out=into, **options)[0]
    with torch.no_grad():
        out, _ = merge_rounds(q, k, v, rounds)
    return _written(out.to(v.dtype), into)


def _written(out: Tensor, into: Tensor | None) -> Tensor:
    """out, copied into `into` and returned as it when given."""
    return out if into is None else into.copy_(out)
