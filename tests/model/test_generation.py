"""Cached decoding (`ReformerLM.generate`) against recomputation and brute-force loops.

Full and local attention must match recomputation exactly; cached LSH attention is checked
against a loop-by-loop evaluation of its definition (model/generation.py's docstring).
"""

from __future__ import annotations

import math

import pytest
import torch

from reformer_lab.model import ReformerConfig, ReformerLM
from reformer_lab.model.attention.hashing import bucket_factors, default_n_buckets
from reformer_lab.model.attention.lsh import EVAL_STEP
from reformer_lab.model.decoding import IncrementalDecoder, filter_top_k, filter_top_p, next_token
from reformer_lab.model.decoding.attend import attend_lsh
from reformer_lab.model.decoding.positions import position_row
from reformer_lab.model.positional import AxialPositionalEmbedding

SELF = -1e5


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread; on a busy 2-core machine it costs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw) -> ReformerConfig:
    base = dict(
        vocab_size=19, dim=16, depth=2, heads=2, max_seq_len=128, bucket_size=8, n_hashes=2, seed=1
    )
    base.update(kw)
    return ReformerConfig(**base)


def seeded_model(cfg: ReformerConfig, seed: int = 0, double: bool = False) -> ReformerLM:
    torch.manual_seed(seed)
    model = ReformerLM(cfg).eval()
    return model.double() if double else model


def tokens(B: int, N: int, vocab: int = 19, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (B, N), generator=torch.Generator().manual_seed(seed))


def teacher_forced(model: ReformerLM, seq: torch.Tensor, N: int) -> torch.Tensor:
    """Cached logits of positions N-1 .. L-1 when seq[:, N:] is fed one token at a time."""
    decoder = IncrementalDecoder(model, seq.shape[1])
    with torch.no_grad():
        out = [decoder.prefill(seq[:, :N])]
        out += [decoder.step(seq[:, t]) for t in range(N, seq.shape[1] - 1)]
    return torch.stack(out, dim=1)  # (B, L - N, vocab)


# --- full and local attention: identical to recomputation ---------------------------------
EXACT_KINDS = [
    dict(attention="full"),
    dict(attention="full", shared_qk=False),
    dict(attention="full", reversible=False, ff_chunks=3),
    dict(attention="local"),
    dict(attention="local", shared_qk=False),
    dict(attention=["local", "full", "local"], depth=3, attn_chunks=2),
]


@pytest.mark.parametrize("kw", EXACT_KINDS)
def test_cached_logits_equal_recomputation_at_every_step_full_and_local(kw):
    model = seeded_model(tiny(**kw))
    seq = tokens(2, 40)
    N = 13  # crosses chunk boundaries of 8 both in the prompt and while decoding
    cached = teacher_forced(model, seq, N)  # (B, 27, vocab)
    with torch.no_grad():
        recomputed = model(seq)[:, N - 1 : -1]  # causal and exact: equals prefix recomputation
    torch.testing.assert_close(cached, recomputed, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", EXACT_KINDS)
def test_cached_greedy_generation_is_identical_to_recomputation_full_and_local(kw):
    model = seeded_model(tiny(**kw))
    prompt = tokens(2, 11, seed=3)
    cached = model.generate(prompt, max_new_tokens=30, temperature=0.0)
    recomputed = model.generate(prompt, max_new_tokens=30, temperature=0.0, use_cache=False)
    assert cached.shape == (2, 41) and cached.dtype == torch.int64
    assert torch.equal(cached[:, :11], prompt)
    assert torch.equal(cached, recomputed)


def test_first_generated_token_comes_from_the_models_own_prompt_logits():
    model = seeded_model(tiny(attention="lsh", n_hashes=3))
    prompt = tokens(3, 21)
    with torch.no_grad():
        expected = model(prompt)[:, -1]  # (B, vocab)
        prefill = IncrementalDecoder(model, 40).prefill(prompt)
    torch.testing.assert_close(prefill, expected, atol=0, rtol=0)
    out = model.generate(prompt, max_new_tokens=1, temperature=0.0)
    assert torch.equal(out[:, -1], expected.argmax(-1))


# --- LSH: against a brute-force evaluation of the cached definition -----------------------
def brute_lsh_query(q, keys, values, buckets, chunk, local_window, dedup):
    """One query at t = T - 1 by the definition, in loops: (d,), (T, d), (T, d), (R, T) -> (d,)."""
    R, T = buckets.shape
    t = T - 1
    start = max(0, (t // chunk - 1) * chunk)

    def members(r):
        same = [j for j in range(T) if buckets[r, j] == buckets[r, t]]
        window = list(range(start, T)) if local_window else []
        return sorted(set(same) | set(window))

    sets = [members(r) for r in range(R)]
    outs, lses = [], []
    for r in range(R):
        scores = []
        for j in sets[r]:
            s = float(keys[j] @ q) / math.sqrt(q.shape[0])
            if dedup and R > 1:
                s -= math.log(sum(j in sets[r2] for r2 in range(R)))
            scores.append(SELF if j == t else s)
        scores = torch.tensor(scores, dtype=torch.float64)
        outs.append(torch.softmax(scores, 0) @ values[sets[r]].double())
        lses.append(torch.logsumexp(scores, 0))
    weights = torch.softmax(torch.stack(lses), 0)
    return (weights[:, None] * torch.stack(outs)).sum(0)


@pytest.mark.parametrize("local_window", [True, False])
@pytest.mark.parametrize("dedup", [False, True])
@pytest.mark.parametrize("T", [1, 5, 23, 40])
def test_cached_lsh_attention_matches_brute_force_definition(T, dedup, local_window):
    g = torch.Generator().manual_seed(T)
    B, H, R, d = 2, 2, 3, 4
    q = torch.randn(B, H, d, generator=g, dtype=torch.float64)
    keys = torch.nn.functional.normalize(
        torch.randn(B, H, T, d, generator=g, dtype=torch.float64), dim=-1
    )
    values = torch.randn(B, H, T, d, generator=g, dtype=torch.float64)
    buckets = torch.randint(0, 3, (B, H, R, T), generator=g, dtype=torch.int32)  # big buckets
    out = attend_lsh(q, keys, values, buckets, chunk=4, local_window=local_window, dedup=dedup)
    for b in range(B):
        for h in range(H):
            expected = brute_lsh_query(
                q[b, h], keys[b, h], values[b, h], buckets[b, h], 4, local_window, dedup
            )
            torch.testing.assert_close(out[b, h], expected, atol=1e-12, rtol=1e-10)


def brute_bucket(key, rotations, factors, h, r):
    """argmax([xR; -xR]) per factor, combined as b1 + n1 * b2 (hashing.py), for one vector."""
    bucket, stride = 0, 1
    for rotation, n in zip(rotations, factors):
        projected = key.float() @ rotation[h, r].float()  # (n / 2,)
        bucket += int(torch.cat([projected, -projected]).argmax()) * stride
        stride *= n
    return bucket


def brute_decode(model, prompt, continuation, n_buckets):
    """Teacher-forced logits for each continuation token, by the definition, one row, in loops."""
    cfg, H = model.cfg, model.cfg.heads
    d, C = cfg.head_dim, cfg.bucket_size
    inputs = [[] for _ in model.layers]  # per layer: the attention input LN(x2) per position

    def keep(i, layer):  # x2 entering the attention branch -> LN(x2) per prompt position
        return lambda _m, args: inputs[i].extend(layer.f.norm(args[0][0, : prompt.shape[0]]))

    handles = [
        layer.f.register_forward_pre_hook(keep(i, layer)) for i, layer in enumerate(model.layers)
    ]
    model(prompt[None])
    for handle in handles:
        handle.remove()

    logits = []
    for t, token in enumerate(continuation.tolist(), start=prompt.shape[0]):
        x1 = x2 = model.token_emb.weight[token] + model.pos_emb(t + 1)[t]  # (dim,)
        for i, layer in enumerate(model.layers):
            inputs[i].append(layer.f.norm(x2))
            att, core = layer.f.attention, layer.f.attention.core
            heads_out = []
            for h in range(H):
                rows = slice(h * d, (h + 1) * d)
                qs = [att.to_q.weight[rows] @ a for a in inputs[i]]  # (d,) per position
                ks = [
                    q / q.norm().clamp(min=1e-6) if att.to_k is None else att.to_k.weight[rows] @ a
                    for q, a in zip(qs, inputs[i])
                ]
                vs = torch.stack([att.to_v.weight[rows] @ a for a in inputs[i]])  # (t + 1, d)
                if att.kind == "lsh":
                    factors = bucket_factors(n_buckets)
                    rotations = core.rotations(
                        factors, core.n_hashes, torch.device("cpu"), EVAL_STEP
                    )
                    buckets = torch.tensor(
                        [
                            [brute_bucket(k, rotations, factors, h, r) for k in ks]
                            for r in range(core.n_hashes)
                        ]
                    )  # (R, t + 1)
                    o = brute_lsh_query(
                        qs[t],
                        torch.stack(ks),
                        vs,
                        buckets,
                        C,
                        core.attend_across_buckets,
                        not core.allow_duplicate_attention,
                    )
                elif att.kind == "local":
                    window = list(range(max(0, (t // C - 1) * C), t + 1))
                    scores = torch.stack([ks[j] @ qs[t] / math.sqrt(d) for j in window])
                    scores[-1] = SELF
                    o = torch.softmax(scores, 0) @ vs[window]
                else:
                    allowed = [j for j in range(t + 1) if j != t or t == 0]
                    scores = torch.stack([ks[j] @ qs[t] / math.sqrt(d) for j in allowed])
                    o = torch.softmax(scores, 0) @ vs[allowed]
                heads_out.append(o.to(x1.dtype))
            y1 = x1 + att.to_out(torch.cat(heads_out))
            x2 = x2 + layer.g(y1[None])[0]
            x1 = y1
        logits.append(model.head(model.norm(torch.cat([x1, x2]))))
    return torch.stack(logits)  # (len(continuation), vocab)


def test_cached_buckets_equal_the_layers_own_eval_hashing():
    """Same rotations as the model's eval forward (n_buckets fixed, so lengths don't matter)."""
    model = seeded_model(tiny(n_buckets=6, n_hashes=3, depth=2))
    decoder = IncrementalDecoder(model, 30)
    with torch.no_grad():
        decoder.prefill(tokens(2, 20))
        for cache in decoder.caches:
            keys = cache.keys[:, :, :20]  # (B, H, 20, d)
            expected = cache.core.buckets(keys, None, 3)  # (B, H, R, 20)
            assert torch.equal(cache.buckets[..., :20].long(), expected)
            assert expected.unique().numel() > 2  # the hash does spread the keys


LSH_VARIANTS = [
    dict(n_buckets=None),
    dict(n_buckets=4, allow_duplicate_attention=False, attn_chunks=2),
    dict(n_buckets=4, attend_across_buckets=False),
    dict(n_buckets=6, allow_duplicate_attention=False, attend_across_buckets=False, n_hashes=3),
]


@pytest.mark.parametrize("kw", LSH_VARIANTS)
def test_cached_lsh_model_matches_brute_force_walk_of_the_definition(kw):
    cfg = tiny(depth=4, attention=["lsh", "local", "lsh", "full"], bucket_size=4, **kw)
    model = seeded_model(cfg, double=True)
    N, K = 9, 8
    seq = tokens(2, N + K, seed=5)
    cached = teacher_forced(model, seq, N)  # (B, K, vocab)
    n_buckets = kw["n_buckets"] or default_n_buckets(math.ceil((N + K) / 4) * 4, 4)
    with torch.no_grad():
        for b in range(2):
            expected = brute_decode(model, seq[b, :N], seq[b, N:-1], n_buckets)
            torch.testing.assert_close(cached[b, 1:], expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_hashes=3),
        dict(n_hashes=3, allow_duplicate_attention=False),
        dict(n_hashes=2, attend_across_buckets=False, n_buckets=4),
    ],
)
def test_lsh_within_one_chunk_equals_recomputation(kw):
    """Padded length <= bucket_size: training's chunk and the cached set are both all j <= t."""
    model = seeded_model(tiny(bucket_size=32, max_seq_len=32, **kw))
    seq = tokens(2, 30, seed=7)
    cached = teacher_forced(model, seq, 8)
    with torch.no_grad():
        recomputed = model(seq)[:, 7:-1]
    torch.testing.assert_close(cached, recomputed, atol=2e-5, rtol=1e-5)
    prompt = seq[:, :8]
    assert torch.equal(
        model.generate(prompt, max_new_tokens=24, temperature=0.0),
        model.generate(prompt, max_new_tokens=24, temperature=0.0, use_cache=False),
    )


def test_batch_rows_decode_independently():
    model = seeded_model(tiny(attention=["lsh", "local"], n_buckets=4, bucket_size=4))
    prompt = tokens(3, 10, seed=9)
    together = model.generate(prompt, max_new_tokens=20, temperature=0.0)
    for b in range(3):
        alone = model.generate(prompt[b : b + 1], max_new_tokens=20, temperature=0.0)
        assert torch.equal(together[b : b + 1], alone)


# --- memory, state and positions ----------------------------------------------------------
def test_caches_hold_only_keys_values_and_bucket_ids():
    cfg = tiny(depth=3, attention=["lsh", "local", "full"], n_hashes=3)
    model = seeded_model(cfg)
    B, N, capacity = 2, 12, 30
    decoder = IncrementalDecoder(model, capacity)
    with torch.no_grad():
        decoder.prefill(tokens(B, N))
        decoder.step(torch.zeros(B, dtype=torch.long))
    kv = 2 * B * cfg.heads * capacity * cfg.head_dim * 4  # fp32 keys and values
    buckets = B * cfg.heads * 3 * capacity * 4  # int32, the one LSH layer
    assert decoder.nbytes() == 3 * kv + buckets
    assert decoder.length == N + 1 and all(c.length == N + 1 for c in decoder.caches)


def test_generate_restores_training_flags_and_leaves_the_model_unchanged():
    model = seeded_model(tiny(n_hashes=2)).train()
    model.layers[0].g.eval()  # a mixed state must come back exactly
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = tokens(1, 9)
    for use_cache in (True, False):
        out = model.generate(prompt, max_new_tokens=5, temperature=0.0, use_cache=use_cache)
        assert out.shape == (1, 14)
    assert [m.training for m in model.modules()] == flags
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # hash_step included


@pytest.mark.parametrize("shape,dims", [((4, 8), (6, 10)), ((2, 3, 5), (4, 4, 8))])
def test_position_row_equals_the_full_table(shape, dims):
    torch.manual_seed(0)
    pos_emb = AxialPositionalEmbedding(shape, dims)
    n = math.prod(shape)
    table = pos_emb(n)
    for t in range(n):
        assert torch.equal(position_row(pos_emb, t), table[t])


# --- sampling ------------------------------------------------------------------------------
def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    for k in (1, 5, 50):
        kept = torch.isfinite(filter_top_k(logits, k))
        for row in range(3):
            expected = set(sorted(range(50), key=lambda i: -logits[row, i])[:k])
            assert set(kept[row].nonzero().flatten().tolist()) == expected


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(logits, -1)
    for p in (0.05, 0.5, 0.9, 1.0):
        kept = torch.isfinite(filter_top_p(logits, p))
        for row in range(3):
            expected, mass = set(), 0.0
            for i in sorted(range(30), key=lambda i: -probs[row, i]):
                if mass >= p:
                    break
                expected.add(i)
                mass += float(probs[row, i])
            assert set(kept[row].nonzero().flatten().tolist()) == expected


def test_temperature_sampling_follows_the_tempered_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    draws = next_token(logits, temperature=2.0, top_k=None, top_p=None, generator=g)
    freq = torch.bincount(draws, minlength=4).float() / 4000
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 2.0, -1), atol=0.025, rtol=0)
    draws = next_token(logits, temperature=1.0, top_k=2, top_p=None, generator=g)
    assert set(draws.tolist()) == {1, 2}
    draws = next_token(logits, temperature=1.0, top_k=None, top_p=0.5, generator=g)
    assert set(draws.tolist()) == {2}  # p(2) = 0.64 >= 0.5 alone


def test_sampling_is_reproducible_with_a_generator_and_varies_with_its_seed():
    model = seeded_model(tiny())
    prompt = tokens(2, 8)

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return model.generate(prompt, max_new_tokens=24, top_k=10, top_p=0.95, generator=g)

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    greedy = model.generate(prompt, max_new_tokens=24, temperature=0.0)
    assert torch.equal(model.generate(prompt, max_new_tokens=24, top_k=1), greedy)


def test_zero_new_tokens_and_int32_prompts():
    model = seeded_model(tiny())
    prompt = tokens(2, 8)
    assert torch.equal(model.generate(prompt, max_new_tokens=0), prompt)
    out = model.generate(prompt.int(), max_new_tokens=3, temperature=0.0)
    assert out.dtype == torch.int64
    assert torch.equal(out, model.generate(prompt, max_new_tokens=3, temperature=0.0))


# --- bad input -----------------------------------------------------------------------------
BAD_INPUTS = [
    (dict(prompt=torch.zeros(5, dtype=torch.long)), "prompt must be a \\(batch, seq\\)"),
    (dict(prompt=torch.zeros(1, 5)), "int64 token ids"),
    (dict(prompt=torch.zeros(2, 0, dtype=torch.long)), "is empty"),
    (dict(prompt=torch.full((1, 5), 19)), "vocab_size=19"),
    (dict(max_new_tokens=124), "exceeds max_seq_len=128"),
    (dict(max_new_tokens=-1), "max_new_tokens must be"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be"),
    (dict(temperature=-0.5), "temperature must be"),
    (dict(temperature=float("nan")), "temperature must be"),
    (dict(top_k=0), "top_k must be"),
    (dict(top_k=20), "top_k must be"),
    (dict(top_p=0.0), "top_p must be"),
    (dict(top_p=1.5), "top_p must be"),
    (dict(use_cache="yes"), "use_cache must be"),
    (dict(generator=0), "generator must be"),
]


@pytest.mark.parametrize("kw,message", BAD_INPUTS)
def test_bad_arguments_raise_before_any_work(kw, message):
    model = seeded_model(tiny())
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    args = dict(prompt=tokens(1, 5), max_new_tokens=4)
    args.update(kw)
    with pytest.raises(ValueError, match=message):
        model.generate(**args)
    assert not calls


def test_bidirectional_model_cannot_generate():
    model = seeded_model(tiny(causal=False))
    with pytest.raises(ValueError, match="causal model"):
        model.generate(tokens(1, 5), max_new_tokens=2)


def test_decoder_refuses_training_mode():
    model = ReformerLM(tiny()).train()
    with pytest.raises(RuntimeError, match="eval"):
        IncrementalDecoder(model, 10).prefill(tokens(1, 4))
