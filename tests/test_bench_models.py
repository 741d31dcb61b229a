"""What the benchmark runs: the plain-transformer baselines, the sizes, each implementation's wiring."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCH_DIR = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from reformer_bench.availability import missing_reason  # noqa: E402
from reformer_bench.impls import BUILDERS, reformer_lab_ff_chunks  # noqa: E402
from reformer_bench.measure import RunSpec, run_one  # noqa: E402
from reformer_bench.plain_transformer import PlainTransformerLM  # noqa: E402
from reformer_bench.settings import SIZES, axial_factors, check_seq, ff_chunk_count  # noqa: E402

TINY = SIZES["tiny"]


def random_tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def test_checkpointed_blocks_give_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    plain = PlainTransformerLM(256, 64, 2, 4)
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint_blocks = True
    tokens = random_tokens(65)
    losses = []
    for model in (plain, ckpt):
        loss = model.loss(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7, msg=name)


def test_plain_transformer_is_causal_and_its_loss_is_next_token_cross_entropy() -> None:
    torch.manual_seed(0)
    model = PlainTransformerLM(256, 32, 2, 4).eval()
    tokens = random_tokens(40)
    changed = tokens.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 256
    logits, logits_changed = model(tokens), model(changed)  # (1, 40, 256)
    torch.testing.assert_close(logits[:, :20], logits_changed[:, :20], rtol=0, atol=1e-6)
    assert (logits[:, 20:] - logits_changed[:, 20:]).abs().max() > 1e-3
    expected = F.cross_entropy(logits[0, :-1], tokens[0, 1:])
    torch.testing.assert_close(model.loss(tokens[:, :-1], tokens[:, 1:]), expected)


def test_sizes_lengths_and_axial_factors() -> None:
    assert (TINY.dim, TINY.depth, TINY.heads, TINY.bucket_size, TINY.n_hashes) == (64, 2, 4, 16, 4)
    base = SIZES["base"]
    assert (base.dim, base.depth, base.heads, base.bucket_size, base.n_hashes, base.vocab_size) == (
        512, 6, 8, 64, 4, 256)  # fmt: skip
    assert [axial_factors(n) for n in (256, 4096, 32768, 1 << 20)] == [
        (16, 16), (64, 64), (128, 256), (1024, 1024)]  # fmt: skip
    assert [ff_chunk_count(n) for n in (256, 8192, 65536, 1 << 20)] == [1, 1, 8, 128]
    with pytest.raises(ValueError, match="power of two"):
        axial_factors(3000)
    with pytest.raises(ValueError, match="shorter than two buckets"):
        check_seq(64, base)


def test_reformer_lab_is_built_reversible_chunked_with_axial_shape_of_the_length() -> None:
    built = BUILDERS["reformer-lab"](SIZES["base"], 65536)
    cfg = built.model.cfg
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.bucket_size, cfg.n_hashes) == (512, 6, 8, 64, 4)
    assert cfg.causal and cfg.reversible and cfg.attention == "lsh" and cfg.dropout == 0.0
    assert cfg.max_seq_len == 65536 and tuple(cfg.axial_shape) == (256, 256)
    assert cfg.ff_chunks == 4 and built.settings["ff_chunks"] == 4  # 16K positions per chunk
    # sized by hidden elements: tiny's d_ff 256 takes 128K positions a chunk
    assert [reformer_lab_ff_chunks(TINY, n) for n in (65536, 1 << 20)] == [1, 8]


def test_reformer_lab_graph_is_the_same_model_with_memory_sized_chunks_and_needs_cuda(
    monkeypatch,
) -> None:
    from reformer_lab.kernels import rounds

    monkeypatch.setattr(rounds, "ACCUMULATOR_BYTES", rounds.ACCUMULATOR_BYTES)  # restored after
    built = BUILDERS["reformer-lab-graph"](TINY, 65536)
    assert rounds.ACCUMULATOR_BYTES == 8 << 20 and built.settings["accumulator_mib"] == 8
    assert built.settings["cuda_graph"] and built.model.cfg.ff_chunks == 4  # 16K positions
    assert built.model.cfg.attention == "lsh" and built.model.cfg.reversible
    with pytest.raises(ValueError, match="needs CUDA tensors"):  # a clear error on the CPU
        built.step(random_tokens(65))


def test_reformer_lab_offload_is_the_graph_build_with_the_streams_in_host_memory(
    monkeypatch,
) -> None:
    from reformer_lab.kernels import rounds

    monkeypatch.setattr(rounds, "ACCUMULATOR_BYTES", rounds.ACCUMULATOR_BYTES)  # restored after
    built = BUILDERS["reformer-lab-offload"](TINY, 65536)
    graph = BUILDERS["reformer-lab-graph"](TINY, 65536)
    assert built.model.cfg.offload_streams and not graph.model.cfg.offload_streams
    assert built.settings["offload_streams"] and built.settings["cuda_graph"]
    assert built.settings["host_stream_gb"] == 4 * 65536 * TINY.dim * 4 / 1e9
    assert {k: v for k, v in built.settings.items() if k not in ("offload_streams",
            "host_stream_gb")} == {k: v for k, v in graph.settings.items()
                                   if k != "offload_streams"}  # fmt: skip


def test_reformer_lab_loss_predicts_the_next_token() -> None:
    torch.manual_seed(0)
    built = BUILDERS["reformer-lab"](TINY, 64)
    built.model.eval()  # fixed hash rotations, so two calls compute the same function
    tokens = random_tokens(65)
    expected = F.cross_entropy(built.model(tokens[:, :-1])[0], tokens[0, 1:])
    torch.testing.assert_close(built.loss(tokens), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_hf_peer_runs_one_cpu_step_with_lsh_layers_and_axial_positions() -> None:
    pytest.importorskip("transformers")
    built = BUILDERS["hf"](TINY, 256)
    cfg = built.model.config
    assert cfg.attn_layers == ["lsh", "lsh"] and cfg.is_decoder and cfg.axial_pos_embds
    assert tuple(cfg.axial_pos_shape) == (16, 16) and cfg.lsh_attn_chunk_length == 16
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.feed_forward_size) == (64, 4, 256)
    result = run_one(RunSpec("hf", "tiny", 256, device="cpu", target_s=0.0))
    assert result["status"] == "ok", result["message"]
    assert result["impl_version"].startswith("transformers ")
    assert result["settings"]["num_buckets"] == 32  # HF's choice: 2 * 256 / 16


@pytest.mark.slow
def test_lucidrains_peer_runs_one_cpu_step_and_its_loss_predicts_the_next_token() -> None:
    pytest.importorskip("reformer_pytorch")
    torch.manual_seed(0)
    built = BUILDERS["lucidrains"](TINY, 256)
    tokens = random_tokens(257)
    torch.manual_seed(1)  # its LSH draws random rotations per call: same seed, same rotations
    loss = built.loss(tokens)
    torch.manual_seed(1)
    expected = F.cross_entropy(built.model(tokens[:, :-1])[0], tokens[0, 1:])
    torch.testing.assert_close(loss, expected)
    result = run_one(RunSpec("lucidrains", "tiny", 256, device="cpu", target_s=0.0))
    assert result["status"] == "ok", result["message"]
    assert "reformer-pytorch 1.4.4" in result["impl_version"]


def test_missing_peers_are_named_with_the_install_hint() -> None:
    assert missing_reason("full") is None and missing_reason("full-ckpt") is None
    for impl, module in (("hf", "transformers"), ("lucidrains", "reformer_pytorch")):
        reason = missing_reason(impl)
        try:
            __import__(module)
            assert reason is None
        except ImportError:
            assert reason == f"{module} is not importable: pip install 'reformer-lab[bench]'"
