"""Angular LSH (sec 2): h(x) = argmax([xR; -xR]) with a random rotation R per hash round.

Rotations come from an explicit `torch.Generator` seeded from (config seed, layer, step), so
hashing never touches the global RNG: training draws fresh rotations each step, reproducibly;
eval uses one fixed set per layer, so two eval passes give identical outputs.

The rotated vectors are formed in fp32 (also under autocast: bf16 rounding would tie
angles). On CUDA (backend 'auto' or 'triton') `hash_buckets` runs one fused Triton kernel
(`reformer_lab.kernels.triton_hashing`) that keeps them in registers; `hash_vectors` is the
CPU path and the reference it is tested against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..fused import triton_allowed

FACTOR_MAX_BUCKETS = 64
SINGLE_HASH_MAX_BUCKETS = 128
"""Above this many buckets the hash is the product of several angular hashes of at most this
many buckets each (trax and HF factorise the same way for long inputs): bucket = b1 + n1 b2 +
n1 n2 b3 ... Hashing then costs O(L d n^(1/k)) instead of O(L d n). Each factor is itself an
angular LSH, so the product is an LSH family too (an AND-construction)."""

HASH_BLOCK_ELEMENTS = 1 << 24
"""Positions are hashed in blocks so the rotated vectors never exceed this many floats."""


def bucket_factors(n_buckets: int) -> tuple[int, ...]:
    """Even factors, each at most FACTOR_MAX_BUCKETS, whose product is n_buckets or just above.

    One factor up to SINGLE_HASH_MAX_BUCKETS; beyond, as few factors as possible and, among
    those, the most balanced (a 2-bucket factor hashes poorly) whose product stays within 15%
    of n_buckets.
    """
    if n_buckets <= SINGLE_HASH_MAX_BUCKETS:
        return (n_buckets,)
    count = math.ceil(math.log(n_buckets) / math.log(FACTOR_MAX_BUCKETS))
    options = list(_factorisations(n_buckets, count))
    return min(options, key=lambda f: (math.prod(f) > 1.15 * n_buckets, f[0], math.prod(f)))


def _factorisations(n: int, count: int, largest: int = FACTOR_MAX_BUCKETS):
    """Non-increasing tuples of `count` even factors <= largest with product >= n (minimal last)."""
    if count == 1:
        last = max(2, 2 * math.ceil(n / 2))
        if last <= largest:
            yield (last,)
        return
    for f in range(2, largest + 1, 2):
        for rest in _factorisations(math.ceil(n / f), count - 1, f):
            yield (f, *rest)


def default_n_buckets(padded_len: int, bucket_size: int) -> int:
    """About 2 * len / bucket_size buckets, so a bucket holds half a chunk on average."""
    return max(2, 2 * (padded_len // bucket_size))


def draw_rotations(
    factors: tuple[int, ...], heads: int, n_hashes: int, dim: int, seed: int, device: torch.device
) -> list[Tensor]:
    """One rotation per factor: (heads, n_hashes, dim, factor // 2), from `seed` alone.

    Gaussian draws rounded to bfloat16 (still a random rotation in the sense of sec 2): a bf16
    x times a bf16 rotation is exact in fp32 products, so the fused kernel forms xR of bf16
    inputs with one bf16 matrix instruction where fp32 rotations took three tf32 ones."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return [
        torch.randn(heads, n_hashes, dim, f // 2, generator=generator, device=device).to(
            torch.bfloat16
        )
        for f in factors
    ]


def hash_vectors(x: Tensor, rotations: list[Tensor], factors: tuple[int, ...]) -> Tensor:
    """Buckets of x per head and round: (B, H, L, d) -> (B, H, R, L) int64 in [0, prod(factors)).

    argmax([xR; -xR]) is taken without building the concatenation: the largest of xR wins
    against the largest of -xR (that is, minus the smallest of xR), first half on ties.
    """
    B, H, L, _ = x.shape
    R = rotations[0].shape[1]
    buckets = torch.zeros(B, H, R, L, dtype=torch.long, device=x.device)
    block = max(1, HASH_BLOCK_ELEMENTS // (B * H * R * (max(factors) // 2)))
    with torch.autocast(x.device.type, enabled=False):
        _hash_blocks(x, rotations, factors, buckets, block)
    return buckets


def _hash_blocks(
    x: Tensor, rotations: list[Tensor], factors: tuple[int, ...], buckets: Tensor, block: int
) -> None:
    L = x.shape[2]
    for start in range(0, L, block):
        xs = x[:, :, start : start + block].float()  # (B, H, l, d)
        stride = 1
        for rotation, n in zip(rotations, factors):
            rotated = torch.einsum("bhld,hrdk->bhrlk", xs, rotation.float())  # (B, H, R, l, n/2)
            top, top_at = rotated.max(dim=-1)
            low, low_at = rotated.min(dim=-1)
            b = torch.where(top >= -low, top_at, low_at + n // 2)  # (B, H, R, l)
            buckets[..., start : start + block] += b * stride
            stride *= n


FUSED_ON_CPU_UNDER_INTERPRETER = False
"""Tests set this to run the fused kernel on CPU tensors under TRITON_INTERPRET=1."""


def fused_hash_usable(x: Tensor, factors: tuple[int, ...], backend: str) -> bool:
    """True when `hash_buckets` runs the fused Triton kernel (see the module docstring)."""
    if not triton_allowed(x, backend, FUSED_ON_CPU_UNDER_INTERPRETER):
        return False
    from reformer_lab.kernels.triton_hashing import fused_hash_supported

    return fused_hash_supported(x, factors)


def hash_buckets(
    x: Tensor,
    rotations: list[Tensor],
    factors: tuple[int, ...],
    key_valid: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Buckets of x per head and round, padding (key_valid False) in one bucket past the last:
    (B, H, L, d) -> (B, H, R, L) int32 in [0, prod(factors)]."""
    pad_bucket = math.prod(factors)
    if fused_hash_usable(x, factors, backend):
        from reformer_lab.kernels.triton_hashing import hash_buckets_fused

        return hash_buckets_fused(x, rotations, factors, key_valid, pad_bucket)
    buckets = hash_vectors(x, rotations, factors)
    if key_valid is not None:
        buckets = buckets.masked_fill(~key_valid[:, None, None, :], pad_bucket)
    return buckets.to(torch.int32)


def sortable_ids(buckets: Tensor, n_ids: int) -> Tensor:
    """Bucket ids in [0, n_ids) in the narrowest integer type that sorts them alike: int16,
    shifted by -2^15 (a shift keeps the order), when n_ids <= 2^16, else the int32 given.
    What the reversible forward keeps of the hashing: 2 bytes a (position, head, round), half
    of an int32 sort order, which `sort_order` re-forms from them in the backward pass."""
    if n_ids <= 1 << 16:
        return (buckets - (1 << 15)).to(torch.int16)
    return buckets


def sort_order(ids: Tensor) -> Tensor:
    """Positions sorted by (bucket, position): (..., L) ids -> (..., L) int32. A stable sort
    keeps positions in order within each bucket; int32 is what the fused kernels read."""
    return torch.sort(ids, dim=-1, stable=True).indices.to(torch.int32)


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (Python's hash of str is salted; this is not)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 29
    return value & 0x7FFFFFFFFFFFFFFF
