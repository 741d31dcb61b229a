"""What the benchmark measures: the two model sizes, the sequence lengths, the implementations.

Sizes follow issue 4 §1: `base` is the Reformer paper's enwik8-scale setting (sec 5: d_model
512, 6 layers, 8 heads, 4 hash rounds); `tiny` is the 4 GB-card config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelSize:
    name: str
    dim: int
    depth: int
    heads: int
    bucket_size: int
    n_hashes: int
    vocab_size: int = 256
    ff_mult: int = 4

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


SIZES: dict[str, ModelSize] = {
    "base": ModelSize("base", dim=512, depth=6, heads=8, bucket_size=64, n_hashes=4),
    "tiny": ModelSize("tiny", dim=64, depth=2, heads=4, bucket_size=16, n_hashes=4),
}

SEQ_LENGTHS: tuple[int, ...] = (4096, 16384, 65536, 262144, 1048576)  # 4K ... 1M

IMPLS: tuple[str, ...] = (
    "reformer-lab",
    "reformer-lab-graph",
    "reformer-lab-offload",
    "full-ckpt",
    "full",
    "hf",
    "lucidrains",
)
"""All implementations, in the order the matrix runs them (most important first)."""

FF_CHUNK_TOKENS = 8192
"""Positions per feed-forward chunk, the same for every implementation that chunks (sec 3)."""


def axial_factors(seq: int) -> tuple[int, int]:
    """Two powers of two whose product is `seq` (a power of two), the first <= the second.

    HF requires the axial shape to multiply to exactly the training length.
    """
    if seq < 1 or seq & (seq - 1):
        raise ValueError(f"seq={seq} must be a power of two")
    first = 1 << (seq.bit_length() - 1) // 2
    return first, seq // first


def check_seq(seq: int, size: ModelSize) -> None:
    """Reject lengths some implementation cannot take, before any run starts."""
    if seq < 1 or seq & (seq - 1):
        raise ValueError(f"seq={seq} must be a power of two (e.g. 4096, 65536)")
    if seq < 2 * size.bucket_size:
        raise ValueError(
            f"seq={seq} is shorter than two buckets of config {size.name!r} "
            f"(2 * {size.bucket_size}); reformer-pytorch needs seq divisible by 2 * bucket_size"
        )


def ff_chunk_count(seq: int) -> int:
    """Number of feed-forward chunks of about FF_CHUNK_TOKENS positions."""
    return max(1, seq // FF_CHUNK_TOKENS)


RESULT_PREFIX = "BENCH_RESULT "
"""A run's process prints its result as this prefix + one JSON object, its last stdout line."""

INJECTABLE = ("oom", "error", "crash", "hang", "slow")
"""Failures a test can inject into a run after its model is built (`run.py matrix --inject`),
to exercise the real failure paths: an out-of-memory exception, another exception, a process
that dies without a result, a process frozen from its start (killed by the matrix), a warm-up
step that never ends (reported by the run's watchdog)."""
