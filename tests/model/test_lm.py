"""ReformerLM end to end: causality, chunking, padding, determinism, precision, config checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reformer_lab.model import ConfigError, ReformerConfig, ReformerLM
from reformer_lab.model.positional import AxialPositionalEmbedding

KINDS = ["lsh", "local", "full"]


def tiny(**kw) -> ReformerConfig:
    base = dict(
        vocab_size=19, dim=16, depth=2, heads=2, max_seq_len=128, bucket_size=8, n_hashes=2, seed=1
    )
    base.update(kw)
    return ReformerConfig(**base)


def embedding_grad_of_position(model: ReformerLM, tokens: torch.Tensor, i: int) -> torch.Tensor:
    """d(hidden[:, i]) / d(token embeddings), via a hook that keeps the embedding output."""
    kept = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        kept["emb"] = output

    handle = model.token_emb.register_forward_hook(keep)
    h = model.hidden(tokens)
    handle.remove()
    (
        h[:, i] * torch.randn_like(h[:, i])
    ).sum().backward()  # (a plain sum of LayerNorm output is constant)
    return kept["emb"].grad  # (B, N, dim)


@pytest.mark.parametrize("attention", KINDS)
@pytest.mark.parametrize("reversible", [True, False])
def test_causal_gradient_of_position_i_is_zero_for_every_later_input(attention, reversible):
    model = ReformerLM(tiny(attention=attention, reversible=reversible, n_hashes=3))
    tokens = torch.randint(0, 19, (2, 45))
    for i in (0, 7, 20, 44):
        model.zero_grad()
        grad = embedding_grad_of_position(model, tokens, i)
        assert torch.count_nonzero(grad[:, i + 1 :]) == 0, f"position {i} sees the future"
        assert grad[:, : i + 1].abs().sum() > 0


def test_bidirectional_model_sees_both_sides():
    model = ReformerLM(tiny(causal=False, attention="full"))
    grad = embedding_grad_of_position(model, torch.randint(0, 19, (1, 30)), 10)
    assert grad[:, 11:].abs().sum() > 0 and grad[:, :10].abs().sum() > 0


def test_chunked_feed_forward_and_loss_equal_unchunked():
    torch.manual_seed(0)
    ref = ReformerLM(tiny(ff_chunks=1, loss_chunk_size=4096)).double()
    chunked = ReformerLM(tiny(ff_chunks=5, loss_chunk_size=7)).double()
    chunked.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, 19, (2, 50))
    targets = torch.randint(0, 19, (2, 50))
    targets[:, :9] = -100
    results = []
    for model in (ref, chunked):
        out = model.loss(tokens, targets)
        out.loss.backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-12, atol=0)
    assert a.n_tokens == b.n_tokens == 82 and a.n_correct == b.n_correct
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-9, atol=1e-12)


def test_loss_equals_cross_entropy_of_the_full_logits():
    model = ReformerLM(tiny(loss_chunk_size=16)).double().eval()
    tokens, targets = torch.randint(0, 19, (2, 40)), torch.randint(0, 19, (2, 40))
    targets[0, 5] = -100
    logits = model(tokens)
    out = model.loss(tokens, targets)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits.transpose(1, 2), targets))
    counted = targets != -100
    assert out.n_correct == ((logits.argmax(-1) == targets) & counted).sum()


@pytest.mark.parametrize("attention", KINDS)
@pytest.mark.parametrize("train", [False, True])
def test_padding_never_changes_outputs_at_real_positions(attention, train):
    cfg = tiny(attention=attention, n_buckets=8, dropout=0.0)
    torch.manual_seed(0)
    a, b = ReformerLM(cfg), ReformerLM(cfg)
    b.load_state_dict(a.state_dict())
    a.train(train), b.train(train)
    tokens = torch.randint(0, 19, (2, 21))  # 21 is padded to 24 internally
    junk = torch.randint(0, 19, (2, 30))
    padded = torch.cat([tokens, junk], 1)  # 51, padded to 56 internally
    mask = torch.zeros_like(padded, dtype=torch.bool)
    mask[:, :21] = True
    out_a = a(tokens)
    out_b = b(padded, key_padding_mask=mask)
    torch.testing.assert_close(out_a, out_b[:, :21], rtol=1e-5, atol=1e-5)


def test_eval_is_deterministic_and_leaves_the_global_rng_alone():
    model = ReformerLM(tiny(n_hashes=4)).eval()
    tokens = torch.randint(0, 19, (2, 64))
    state = torch.get_rng_state()
    first, second = model(tokens), model(tokens)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)
    clone = ReformerLM(tiny(n_hashes=4)).eval()
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone(tokens), first)  # fixed rotations depend on the seed alone


def test_training_draws_fresh_rotations_each_step_without_touching_global_rng():
    model = ReformerLM(tiny(n_hashes=1, dropout=0.0)).train()
    tokens = torch.randint(0, 19, (1, 64))
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = model(tokens), model(tokens)
    assert not torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def train_steps(seed: int, steps: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    model = ReformerLM(tiny(dropout=0.1, seed=seed))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tokens = torch.randint(0, 19, (2, 40))
    for _ in range(steps):
        opt.zero_grad()
        model.loss(tokens, torch.roll(tokens, -1, 1)).loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_seeded_training_is_reproducible_and_seed_dependent():
    a, b, c = train_steps(0), train_steps(0), train_steps(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_hash_step_counter_is_saved_so_resumed_training_hashes_identically():
    model = ReformerLM(tiny(dropout=0.0))
    tokens = torch.randint(0, 19, (1, 64))
    with torch.no_grad():
        model(tokens)
        resumed = ReformerLM(tiny(dropout=0.0))
        resumed.load_state_dict(model.state_dict())
        assert torch.equal(model(tokens), resumed(tokens))


def test_n_hashes_override():
    model = ReformerLM(tiny(n_hashes=2)).eval()
    tokens = torch.randint(0, 19, (2, 64))
    base = model(tokens)
    assert torch.equal(model(tokens, n_hashes=2), base)
    eight = model(tokens, n_hashes=8)
    assert eight.shape == base.shape and not torch.allclose(eight, base)
    plan: dict = {}
    x = torch.randn(1, 2, 64, 8)
    model.layers[0].f.attention.core(x, x, x, None, n_hashes=8, plan=plan)
    assert plan["order0"].shape == (1, 2, 8, 64)
    with pytest.raises(ValueError, match="n_hashes"):
        model(tokens, n_hashes=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("attention", KINDS)
def test_no_nan_or_inf_under_autocast(dtype, attention):
    model = ReformerLM(tiny(attention=attention, dropout=0.1))
    tokens = torch.randint(0, 19, (2, 45))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[1, 30:] = False
    with torch.autocast("cpu", dtype=dtype):
        out = model.loss(tokens, tokens, key_padding_mask=mask)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_axial_positions_for_images_are_row_column_channel():
    emb = AxialPositionalEmbedding((4, 5, 3), (6, 6, 4))
    table = emb(60)
    for h, w, c in [(0, 0, 0), (1, 2, 1), (3, 4, 2)]:
        expected = torch.cat([emb.tables[0][h], emb.tables[1][w], emb.tables[2][c]])
        assert torch.equal(table[(h * 5 + w) * 3 + c], expected)
    assert torch.equal(emb(7), table[:7])
    with pytest.raises(ValueError, match="axial_shape"):
        emb(61)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(dim=30, heads=4), "divisible"),
        (dict(max_seq_len=100, axial_shape=(8, 8)), "axial_shape"),
        (dict(bucket_size=24), "power of two"),
        (dict(shared_qk=False), "shared_qk"),
        (dict(attention=["lsh"]), "per layer"),
        (dict(attention="sparse"), "unknown"),
        (dict(n_buckets=5), "even"),
        (dict(axial_shape=(8, 16), axial_dims=(8, 4)), "sum to dim"),
        (dict(dropout=1.5), "dropout"),
        (dict(attn_chunks="many"), "attn_chunks"),
        (dict(attn_chunks=0), "attn_chunks"),
    ],
)
def test_config_rejects_contradictions_with_a_message(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**overrides)


def test_bad_inputs_are_rejected_before_any_work():
    model = ReformerLM(tiny())
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 8), 19))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 8))
    with pytest.raises(ValueError, match="key_padding_mask"):
        model(torch.zeros(1, 8, dtype=torch.long), key_padding_mask=torch.ones(1, 8))


def test_readme_api_example_runs():
    cfg = ReformerConfig(
        vocab_size=256,
        dim=32,
        depth=2,
        heads=4,
        max_seq_len=1024,
        bucket_size=64,
        n_hashes=4,
        causal=True,
        attention=["lsh", "local"],
        reversible=True,
        ff_chunks=4,
        axial_shape=(32, 32),
        dropout=0.0,
    )
    model = ReformerLM(cfg)
    tokens = torch.randint(0, 256, (1, 1000))
    assert model(tokens).shape == (1, 1000, 256)
    assert model(tokens, n_hashes=8).shape == (1, 1000, 256)
