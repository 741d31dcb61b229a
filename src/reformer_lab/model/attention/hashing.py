"""Angular LSH (sec 2): h(x) = argmax([xR; -xR]) with a random rotation R per hash round.

Rotations come from an explicit `torch.Generator` seeded from (config seed, layer, step), so
hashing never touches the global RNG: training draws fresh rotations each step, reproducibly;
eval uses one fixed set per layer, so two eval passes give identical outputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SINGLE_HASH_MAX_BUCKETS = 256
"""Above this many buckets the hash is the product of two angular hashes (as trax and HF do
for long inputs): bucket = b1 + n1 * b2. Hashing then costs O(L d sqrt(n)) instead of O(L d n)."""


def bucket_factors(n_buckets: int) -> tuple[int, ...]:
    """Even factors whose product is n_buckets or just above; one factor when it is small.

    Both factors stay within [sqrt(n)/2, 2 sqrt(n)], keeping the two hashes balanced."""
    if n_buckets <= SINGLE_HASH_MAX_BUCKETS:
        return (n_buckets,)
    root = math.sqrt(n_buckets)
    candidates = range(
        2 * math.ceil(root / 4), 2 * math.floor(root / 2) + 1, 2
    )  # even, ~sqrt/2..sqrt
    pairs = [(f, 2 * math.ceil(n_buckets / (2 * f))) for f in candidates]
    return min(pairs, key=lambda p: (p[0] * p[1], -p[0]))


def default_n_buckets(padded_len: int, bucket_size: int) -> int:
    """About 2 * len / bucket_size buckets, so a bucket holds half a chunk on average."""
    return max(2, 2 * (padded_len // bucket_size))


def draw_rotations(
    factors: tuple[int, ...], heads: int, n_hashes: int, dim: int, seed: int, device: torch.device
) -> list[Tensor]:
    """One rotation per factor: (heads, n_hashes, dim, factor // 2), float32, from `seed` alone."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return [
        torch.randn(heads, n_hashes, dim, f // 2, generator=generator, device=device)
        for f in factors
    ]


def hash_vectors(x: Tensor, rotations: list[Tensor], factors: tuple[int, ...]) -> Tensor:
    """Buckets of x per head and round: (B, H, L, d) -> (B, H, R, L) int64 in [0, prod(factors))."""
    buckets = None
    stride = 1
    for rotation, n in zip(rotations, factors):
        rotated = torch.einsum("bhld,hrdk->bhrlk", x.float(), rotation)  # (B, H, R, L, n/2)
        b = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # (B, H, R, L)
        buckets = b * stride if buckets is None else buckets + b * stride
        stride *= n
    assert buckets is not None
    return buckets


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (Python's hash of str is salted; this is not)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 29
    return value & 0x7FFFFFFFFFFFFFFF
