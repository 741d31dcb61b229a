"""How each implementation is built for one (size, length) and what its training loss is.

Every builder returns a `Built`: the module, a loss function of the token tensor
(1, seq + 1) int64 (inputs are tokens[:, :-1], targets tokens[:, 1:]), the implementation's
version and the knobs it was built with (recorded with each result). Peers are imported
inside their builder, so a missing peer only fails its own runs.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .plain_transformer import PlainTransformerLM
from .settings import ModelSize, axial_factors, ff_chunk_count

LossFn = Callable[[Tensor], Tensor]


REFORMER_LAB_KNOBS = (
    "offload_streams",
    "ff_chunks",
    "attn_chunks",
    "axial_shape",
    "n_buckets",
    "loss_chunk",
    "backend",
)
REFORMER_LAB_FF_CHUNK_ELEMENTS = 16384 * 2048
"""reformer-lab recomputes the feed-forward chunk by chunk in its reversible backward, so a
chunk's hidden activations are the only ones alive: at 32K positions of base (d_ff 2048;
~640 MB: pre-activation, GELU output and both gradients in bf16) they set base @ 64K's 1.46 GB
peak on an H200 (`experiments/perf/memory_peak.py`); 16K positions halve them. The chunk is
sized by hidden elements, not positions: tiny's d_ff of 256 takes 128K positions a chunk (one
chunk at 64K), where 16K positions quadrupled the launches of a step that is host-bound."""
REFORMER_LAB_GRAPH_FF_POSITIONS = 16384
REFORMER_LAB_GRAPH_ACCUMULATOR_BYTES = 8 << 20
"""reformer-lab-graph's chunks: replayed, a chunk's launches cost the host nothing, so they are
sized for memory: 16K positions of feed-forward (tiny too), and the rounds backward's fp32
accumulators (`kernels.rounds.ACCUMULATOR_BYTES`, 64 MiB by default) within 8 MiB: one head a
pass at both sizes (at tiny @ 64K, 8 MB of accumulators instead of 34 MB)."""
HF_KNOBS = ("axial_pos_shape", "axial_pos_embds_dim", "chunk_size_feed_forward",
            "lsh_attn_chunk_length", "num_hashes", "hidden_act")  # fmt: skip
LUCIDRAINS_DISTRIBUTIONS = ("reformer-pytorch", "local-attention", "axial-positional-embedding",
                            "product-key-memory")  # fmt: skip
"""Recorded with each result: the knobs each build used, the versions of reformer-pytorch's parts."""


@dataclass
class Built:
    model: nn.Module
    loss: LossFn
    version: str
    settings: dict[str, Any] = field(default_factory=dict)
    step: LossFn | None = None
    """The whole training step of the tokens (gradients, backward) where the implementation
    runs it itself (a captured CUDA graph); None: the harness's eager step around `loss`."""


def reformer_lab_ff_chunks(size: ModelSize, seq: int) -> int:
    """Feed-forward chunks of at most REFORMER_LAB_FF_CHUNK_ELEMENTS hidden activations."""
    return max(1, -(-seq * size.ff_mult * size.dim // REFORMER_LAB_FF_CHUNK_ELEMENTS))


def package_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_reformer_lab(
    size: ModelSize, seq: int, ff_chunks: int | None = None, offload_streams: bool = False
) -> Built:
    import reformer_lab
    from reformer_lab.model import ReformerConfig, ReformerLM

    cfg = ReformerConfig(
        vocab_size=size.vocab_size, dim=size.dim, depth=size.depth, heads=size.heads,
        ff_mult=size.ff_mult, max_seq_len=seq, bucket_size=size.bucket_size,
        n_hashes=size.n_hashes, causal=True, attention="lsh", reversible=True,
        ff_chunks=ff_chunks or reformer_lab_ff_chunks(size, seq), axial_shape=axial_factors(seq),
        dropout=0.0, offload_streams=offload_streams,
    )  # fmt: skip
    model = ReformerLM(cfg)

    def loss(tokens: Tensor) -> Tensor:  # tokens (1, seq + 1)
        return model.loss(tokens[:, :-1], tokens[:, 1:]).loss

    settings = {key: getattr(cfg, key) for key in REFORMER_LAB_KNOBS}
    return Built(model, loss, f"reformer-lab {reformer_lab.__version__}", settings)


def build_reformer_lab_graph(size: ModelSize, seq: int, offload_streams: bool = False) -> Built:
    """reformer-lab's step captured once as a CUDA graph and replayed (`CapturedTrainingStep`):
    the same model, kernels and rotations, without the host's launches between kernels.

    The capture happens in the harness's warm-up step, after an eager step of its own, and the
    peak memory is read from the start of the warm-up (`peak_from_warm_up`), so it covers the
    eager step, the capture and the replays: a replay allocates nothing the allocator could see."""
    from reformer_lab.kernels import rounds

    rounds.ACCUMULATOR_BYTES = REFORMER_LAB_GRAPH_ACCUMULATOR_BYTES  # this run's process only
    ff_chunks = max(1, seq // REFORMER_LAB_GRAPH_FF_POSITIONS)
    built = build_reformer_lab(size, seq, ff_chunks=ff_chunks, offload_streams=offload_streams)
    built.settings["accumulator_mib"] = REFORMER_LAB_GRAPH_ACCUMULATOR_BYTES >> 20
    captured = {}

    def step(tokens: Tensor) -> Tensor:  # tokens (1, seq + 1)
        from reformer_lab.model.captured_step import CapturedTrainingStep

        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        if "step" not in captured:
            captured["step"] = CapturedTrainingStep(built.model, inputs, targets)
        return captured["step"](inputs, targets)

    built.step = step
    built.settings["cuda_graph"] = True
    return built


def build_reformer_lab_offload(size: ModelSize, seq: int) -> Built:
    """reformer-lab-graph with `offload_streams`: the four fp32 residual-stream buffers in
    page-locked host memory (`host_stream_gb` of it, recorded), a chunk at a time on the GPU."""
    built = build_reformer_lab_graph(size, seq, offload_streams=True)
    built.settings["host_stream_gb"] = 4 * seq * size.dim * 4 / 1e9  # Y1, Y2, dY1, dY2 in fp32
    return built


def build_hf(size: ModelSize, seq: int) -> Built:
    from transformers import ReformerConfig, ReformerModelWithLMHead

    half = size.dim // 2
    cfg = ReformerConfig(
        vocab_size=size.vocab_size, hidden_size=size.dim, num_attention_heads=size.heads,
        attention_head_size=size.head_dim, feed_forward_size=size.ff_mult * size.dim,
        attn_layers=["lsh"] * size.depth, is_decoder=True,
        lsh_attn_chunk_length=size.bucket_size, lsh_num_chunks_before=1, lsh_num_chunks_after=0,
        num_hashes=size.n_hashes, num_buckets=None,  # None: HF picks ~2·seq/chunk, factorised when large
        axial_pos_embds=True, axial_pos_shape=axial_factors(seq),
        axial_pos_embds_dim=(half, size.dim - half), max_position_embeddings=seq,
        chunk_size_feed_forward=seq // ff_chunk_count(seq),
        hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
        use_cache=False, tie_word_embeddings=False,
    )  # fmt: skip
    model = ReformerModelWithLMHead(cfg)

    settings = {key: getattr(cfg, key) for key in HF_KNOBS}

    def loss(tokens: Tensor) -> Tensor:  # tokens (1, seq + 1); HF shifts the labels itself
        inputs = tokens[:, :-1]  # (1, seq)
        out = model(input_ids=inputs, labels=inputs)
        settings["num_buckets"] = model.config.num_buckets  # HF sets it on the first step
        return out.loss

    return Built(model, loss, f"transformers {package_version('transformers')}", settings)


def build_lucidrains(size: ModelSize, seq: int) -> Built:
    from reformer_pytorch import ReformerLM

    settings = {
        "ff_chunks": ff_chunk_count(seq), "attn_chunks": size.heads,  # one head at a time
        "axial_position_shape": axial_factors(seq), "reversible": "always in training",
    }  # fmt: skip
    model = ReformerLM(
        num_tokens=size.vocab_size, dim=size.dim, depth=size.depth, max_seq_len=seq,
        heads=size.heads, dim_head=size.head_dim, bucket_size=size.bucket_size,
        n_hashes=size.n_hashes, ff_mult=size.ff_mult, causal=True,
        ff_chunks=settings["ff_chunks"], attn_chunks=settings["attn_chunks"],
        axial_position_emb=True, axial_position_shape=settings["axial_position_shape"],
    )  # fmt: skip

    def loss(tokens: Tensor) -> Tensor:  # tokens (1, seq + 1)
        logits = model(tokens[:, :-1])  # (1, seq, vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())

    versions = {name: package_version(name) for name in LUCIDRAINS_DISTRIBUTIONS}
    version = ", ".join(f"{name} {v}" for name, v in versions.items())
    return Built(model, loss, version, settings)


def build_full(size: ModelSize, seq: int, checkpoint_blocks: bool = False) -> Built:
    model = PlainTransformerLM(
        size.vocab_size, size.dim, size.depth, size.heads, size.ff_mult, checkpoint_blocks
    )

    def loss(tokens: Tensor) -> Tensor:  # tokens (1, seq + 1)
        return model.loss(tokens[:, :-1], tokens[:, 1:])

    settings = {"positions": "none (NoPE)", "attention": "torch SDPA, is_causal=True",
                "checkpoint_blocks": checkpoint_blocks}  # fmt: skip
    return Built(model, loss, "harness (torch SDPA)", settings)


BUILDERS: dict[str, Callable[[ModelSize, int], Built]] = {
    "reformer-lab": build_reformer_lab,
    "reformer-lab-graph": build_reformer_lab_graph,
    "reformer-lab-offload": build_reformer_lab_offload,
    "hf": build_hf,
    "lucidrains": build_lucidrains,
    "full": build_full,
    "full-ckpt": lambda size, seq: build_full(size, seq, checkpoint_blocks=True),
}
