"""`ReformerConfig`: every knob of the model, validated on construction.

Names follow reformer-pytorch where it has one (`dim`, `depth`, `heads`, `bucket_size`,
`n_hashes`, `causal`, `ff_chunks`), so its users can move over without a glossary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

ATTENTION_KINDS = ("lsh", "local", "full")
BACKENDS = ("auto", "torch", "triton")


class ConfigError(ValueError):
    """A `ReformerConfig` whose values contradict each other; the message says what to change."""


@dataclass
class ReformerConfig:
    vocab_size: int = 256
    """Number of token ids (256 for bytes)."""
    dim: int = 512
    """Model width d_model; each of the two reversible streams has this width."""
    depth: int = 6
    """Number of (attention, feed-forward) layer pairs."""
    heads: int = 8
    """Attention heads; `dim` must be divisible by it unless `dim_head` is given."""
    dim_head: int | None = None
    """Width of one head; defaults to dim // heads."""
    ff_mult: int = 4
    """Feed-forward hidden width is ff_mult * dim (the paper's d_ff = 4 * d_model)."""
    max_seq_len: int = 4096
    """Longest input accepted; the axial positional table covers it."""
    bucket_size: int = 64
    """Chunk length of LSH and local attention (sec 2: each chunk attends to itself and the
    chunk before it). Inputs are padded to a multiple of it. A power of two."""
    n_hashes: int = 4
    """Hash rounds of LSH attention during training (sec 2, 'multi-round LSH')."""
    n_buckets: int | None = None
    """Number of hash buckets; None means 2 * padded_length / bucket_size, recomputed per
    call (so the mean bucket holds half a chunk). Fix it to make outputs independent of how
    much padding a batch carries."""
    causal: bool = True
    """Autoregressive masking (language modelling); False for masked-LM / bidirectional."""
    attention: str | list[str] = "lsh"
    """'lsh' | 'local' | 'full', or one of these per layer."""
    shared_qk: bool = True
    """Keys are the length-normalised queries (sec 2). LSH attention requires it."""
    allow_duplicate_attention: bool = True
    """False applies appendix A's correction for a key seen in several hash rounds."""
    attend_across_buckets: bool = True
    """False masks keys whose bucket differs from the query's inside a chunk."""
    reversible: bool = True
    """Reversible residual layers (sec 3); False gives the same network with stored activations."""
    ff_chunks: int = 1
    """Feed-forward applied to this many sequence chunks one at a time (sec 3, 'chunking')."""
    attn_chunks: int | str = "auto"
    """Attention computed for this many groups of heads one at a time, in the forward pass and
    in the reversible recomputation, so only heads / attn_chunks heads' activations exist at
    once (reformer-pytorch chunks the batch under this name; heads bound memory at batch 1).
    "auto": as many groups as keep one group's activations within 2^28 elements (512 MiB in
    bf16), or 3 streams' worth of elements up to 3 x 2^27 where that is more (`lm.AUTO_GROUP_*`),
    at the input's size: at d 512 one group up to 64K tokens, two at 128K and 256K, one head at a time
    from 1M (more groups mean more, smaller kernels and less memory)."""
    offload_streams: bool = False
    """`ReformerLM.loss` keeps the reversible layers' four (B, L, dim) residual-stream buffers
    (two streams and their gradients) in host memory, page-locked on CUDA, and moves them to
    the device one FF chunk (`ff_chunks`) at a time (`streamed.py`): device memory then grows
    with the attention's bf16 activations only (q, k, v, their output and its gradient), at
    the price of ~4 chunk copies each way per layer and pass over the host link. Needs
    reversible=True and dropout=0. "auto" head groups are then one head at a time."""
    loss_chunk_size: int | None = None
    """Positions per chunk in `ReformerLM.loss`: the (seq, vocab) logits never exist at once.
    None: as many as keep a chunk's logits at 2^22 numbers (16384 positions for bytes; on an
    H200, tiny @ 64K peaked at 0.258 GB with it against 0.382 GB with 2^24, 26 ms a step
    against 23 ms)."""
    axial_shape: tuple[int, ...] | None = None
    """Factorisation of the positions for axial embeddings (sec 4 of the paper's appendix / trax):
    2-D for text, (height, width, channels) for images. None picks two near-equal factors."""
    axial_dims: tuple[int, ...] | None = None
    """Width of each axial factor's embedding; they concatenate to `dim`. None splits evenly."""
    dropout: float = 0.0
    """Dropout on embeddings, the feed-forward hidden layer and each branch's output."""
    seed: int = 0
    """Seed of the hash rotations (never the global RNG): fixed for eval, fresh per step in training."""
    backend: str = "auto"
    """Chunked-attention backend: 'auto' (Triton on CUDA when available, else torch), 'torch', 'triton'."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Free-form metadata carried with checkpoints; ignored by the model."""

    def __post_init__(self) -> None:
        if isinstance(self.axial_shape, list):
            self.axial_shape = tuple(self.axial_shape)
        if isinstance(self.axial_dims, list):
            self.axial_dims = tuple(self.axial_dims)
        if not isinstance(self.attention, str):
            self.attention = list(self.attention)
        self._validate()
        if self.axial_shape is None:
            self.axial_shape = default_axial_shape(self.max_seq_len)
        if self.axial_dims is None:
            self.axial_dims = split_evenly(self.dim, len(self.axial_shape))
        self._validate_axial()

    # --- derived values -------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim_head if self.dim_head is not None else self.dim // self.heads

    @property
    def ff_dim(self) -> int:
        return self.ff_mult * self.dim

    @property
    def attention_per_layer(self) -> list[str]:
        if isinstance(self.attention, str):
            return [self.attention] * self.depth
        return list(self.attention)

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded to a multiple of this before the layers (1 for all-full models)."""
        kinds = set(self.attention_per_layer)
        return self.bucket_size if kinds & {"lsh", "local"} else 1

    @property
    def loss_chunk(self) -> int:
        """Positions per loss chunk (see `loss_chunk_size`)."""
        return self.loss_chunk_size or max(1, (1 << 22) // self.vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- validation -----------------------------------------------------------------
    def _validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        for name in (
            "vocab_size",
            "dim",
            "depth",
            "heads",
            "ff_mult",
            "max_seq_len",
            "bucket_size",
            "n_hashes",
            "ff_chunks",
        ):
            value = getattr(self, name)
            need(
                isinstance(value, int) and value >= 1,
                f"{name} must be a positive integer, got {value!r}",
            )
        need(
            self.dim_head is not None or self.dim % self.heads == 0,
            f"dim={self.dim} is not divisible by heads={self.heads}: change one of them "
            f"or set dim_head explicitly",
        )
        need(self.dim_head is None or self.dim_head >= 1, "dim_head must be positive")
        need(
            self.loss_chunk_size is None
            or (isinstance(self.loss_chunk_size, int) and self.loss_chunk_size >= 1),
            f"loss_chunk_size must be a positive integer or None, got {self.loss_chunk_size!r}",
        )
        need(
            self.attn_chunks == "auto"
            or (isinstance(self.attn_chunks, int) and 1 <= self.attn_chunks <= self.heads),
            f"attn_chunks must be 'auto' or an integer in 1..heads={self.heads} (at most one "
            f"group per head), got {self.attn_chunks!r}",
        )
        need(
            self.bucket_size & (self.bucket_size - 1) == 0,
            f"bucket_size={self.bucket_size} must be a power of two (e.g. "
            f"{1 << max(0, self.bucket_size.bit_length() - 1)} or {1 << self.bucket_size.bit_length()})",
        )
        kinds = self.attention_per_layer
        need(
            len(kinds) == self.depth,
            f"attention lists {len(kinds)} layer kinds but depth={self.depth}: give one per layer "
            f"or a single string",
        )
        for kind in kinds:
            need(
                kind in ATTENTION_KINDS,
                f"attention kind {kind!r} is unknown; choose from {ATTENTION_KINDS}",
            )
        need(
            self.shared_qk or "lsh" not in kinds,
            "LSH attention hashes the shared query/key vector: set shared_qk=True or use "
            "attention='full'/'local' for separate queries and keys",
        )
        if self.n_buckets is not None:
            need(
                self.n_buckets >= 2 and self.n_buckets % 2 == 0,
                f"n_buckets={self.n_buckets} must be an even number >= 2 (h(x) = argmax[xR; -xR])",
            )
        need(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        need(
            not self.offload_streams or self.reversible,
            "offload_streams=True keeps the reversible layers' streams in host memory: it needs "
            "reversible=True",
        )
        need(
            not self.offload_streams or self.dropout == 0,
            f"offload_streams=True does not replay dropout masks: set dropout=0 (got "
            f"{self.dropout}) or offload_streams=False",
        )
        need(
            self.backend in BACKENDS, f"backend {self.backend!r} is unknown; choose from {BACKENDS}"
        )
        need(
            self.ff_chunks <= self.max_seq_len,
            f"ff_chunks={self.ff_chunks} exceeds max_seq_len={self.max_seq_len}",
        )

    def _validate_axial(self) -> None:
        shape, dims = self.axial_shape, self.axial_dims
        assert shape is not None and dims is not None
        if any(s < 1 for s in shape):
            raise ConfigError(f"axial_shape={shape} must hold positive sizes")
        if math.prod(shape) < self.max_seq_len:
            raise ConfigError(
                f"axial_shape={shape} covers {math.prod(shape)} positions, fewer than "
                f"max_seq_len={self.max_seq_len}: enlarge a factor or lower max_seq_len"
            )
        if len(dims) != len(shape):
            raise ConfigError(f"axial_dims={dims} needs one width per axial factor {shape}")
        if sum(dims) != self.dim:
            raise ConfigError(f"axial_dims={dims} must sum to dim={self.dim}")


def default_axial_shape(max_seq_len: int) -> tuple[int, int]:
    """Two factors, the first a power of two near sqrt(n), whose product covers n."""
    first = 1 << max(0, math.ceil(math.log2(max_seq_len)) // 2)
    return first, math.ceil(max_seq_len / first)


def split_evenly(total: int, parts: int) -> tuple[int, ...]:
    base, rest = divmod(total, parts)
    return tuple(base + (1 if i < rest else 0) for i in range(parts))
