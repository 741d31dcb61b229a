"""Which cells the sweep measures and which model each one builds (paper sec 5, Fig. 5 right).

A cell is (implementation, length): the batch is TOTAL / length, so every step sees the same
number of tokens and only the attention's cost can change with the length. Implementations
are reformer-lab's `ReformerLM` with a different attention in every layer:

- `full`: `attention="full"`, separate queries and keys (`shared_qk=False`), so it runs
  `F.scaled_dot_product_attention(is_causal=True)` (flash on Hopper): a realistic baseline;
- `full-shared-qk`: the paper's shared-QK full attention (an explicit L x L mask: no flash);
- `lsh1` .. `lsh8`: shared-QK LSH attention with 1, 2, 4 or 8 hash rounds.

Everything else is the benchmark's model size (`base`: d 512, 6 layers, 8 heads, bucket 64),
reversible, causal, byte vocabulary. Nothing here imports torch (the sweep process stays light).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reformer_bench.impls import reformer_lab_ff_chunks
from reformer_bench.settings import ModelSize, axial_factors, check_seq

IMPLS: tuple[str, ...] = ("full", "full-shared-qk", "lsh1", "lsh2", "lsh4", "lsh8")
DEFAULT_IMPLS: tuple[str, ...] = ("full", "lsh1", "lsh2", "lsh4", "lsh8")
DEFAULT_LENGTHS: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768)  # 1K .. 32K
DEFAULT_TOTAL_TOKENS = 32768
"""Tokens per training step (batch x length); 32K makes the longest length batch 1."""


@dataclass(frozen=True)
class Cell:
    impl: str
    seq: int
    batch: int


def plan_cells(
    impls: list[str] | tuple[str, ...],
    lengths: list[int] | tuple[int, ...],
    total_tokens: int,
    size: ModelSize,
) -> list[Cell]:
    """Every implementation at every length, implementation by implementation, shortest first.

    Raises ValueError (saying what to change) for anything a cell could not run with, before
    any cell starts: unknown or repeated names, lengths that are not powers of two or shorter
    than two buckets, and a total that some length does not divide.
    """
    if not impls or not lengths:
        raise ValueError("give at least one implementation and one length")
    unknown = [impl for impl in impls if impl not in IMPLS]
    if unknown:
        raise ValueError(f"unknown implementation(s) {unknown}; choose from {IMPLS}")
    for name, values in (("implementation", impls), ("length", lengths)):
        if len(set(values)) != len(values):
            raise ValueError(f"a {name} is given twice in {list(values)}: give each once")
    if isinstance(total_tokens, bool) or not isinstance(total_tokens, int) or total_tokens < 1:
        raise ValueError(f"total tokens per step must be a positive integer, got {total_tokens!r}")
    for seq in lengths:
        check_seq(seq, size)  # a power of two, at least two buckets
        if total_tokens % seq:
            raise ValueError(
                f"total tokens per step {total_tokens} is not divisible by length {seq}: "
                f"batch x length must equal the total exactly; use a multiple of the longest "
                f"length (e.g. {max(lengths)}) or drop that length"
            )
    return [Cell(impl, seq, total_tokens // seq) for impl in impls for seq in sorted(lengths)]


def attention_settings(impl: str, size: ModelSize) -> dict[str, Any]:
    """The `ReformerConfig` fields that make `impl` (the rest is the same for every cell)."""
    if impl == "full":
        return {"attention": "full", "shared_qk": False, "n_hashes": size.n_hashes}
    if impl == "full-shared-qk":
        return {"attention": "full", "shared_qk": True, "n_hashes": size.n_hashes}
    if impl in IMPLS:  # lshN
        return {"attention": "lsh", "shared_qk": True, "n_hashes": int(impl.removeprefix("lsh"))}
    raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}")


def build_config(impl: str, size: ModelSize, seq: int):
    """reformer-lab's `ReformerConfig` for one cell (imports torch)."""
    from reformer_lab.model import ReformerConfig

    return ReformerConfig(
        vocab_size=size.vocab_size, dim=size.dim, depth=size.depth, heads=size.heads,
        ff_mult=size.ff_mult, max_seq_len=seq, bucket_size=size.bucket_size, causal=True,
        reversible=True, ff_chunks=reformer_lab_ff_chunks(size, seq),
        axial_shape=axial_factors(seq), dropout=0.0, **attention_settings(impl, size),
    )  # fmt: skip


def config_label(size_name: str, total_tokens: int) -> str:
    """The records' `config`: model size and tokens per step, e.g. 'base, 32768 tokens/step'."""
    return f"{size_name}, {total_tokens} tokens/step"
