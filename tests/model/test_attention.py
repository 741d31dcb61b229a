"""LSH, local and full attention against brute-force references written out in loops."""

from __future__ import annotations

import pytest
import torch

from reformer_lab.model.attention import (
    FullAttentionCore,
    LocalAttentionCore,
    LSHAttentionCore,
    chunked_attention_torch,
)
from reformer_lab.model.attention.chunked import normalize_keys
from reformer_lab.model.attention.hashing import (
    bucket_factors,
    hash_vectors,
    sort_order,
    sortable_ids,
)

from .reference import full_shared_qk, lsh_rounds


def lsh_core(bucket_size=8, n_hashes=2, causal=True, **kw) -> LSHAttentionCore:
    defaults = dict(
        n_buckets=None,
        allow_duplicate_attention=True,
        attend_across_buckets=True,
        seed=0,
        layer_index=0,
        backend="torch",
    )
    defaults.update(kw)
    return LSHAttentionCore(
        heads=2, head_dim=8, bucket_size=bucket_size, n_hashes=n_hashes, causal=causal, **defaults
    )


def random_qkv(B=2, H=2, L=32, d=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(L * 7 + B)
    qk = torch.randn(B, H, L, d, generator=g, dtype=dtype)
    v = torch.randn(B, H, L, d, generator=g, dtype=dtype)
    return qk, normalize_keys(qk), v


@pytest.mark.parametrize("causal", [True, False])
def test_lsh_equals_full_attention_when_one_chunk_holds_everything(causal):
    # L == bucket_size: the single chunk contains every key whatever the hashes.
    qk, k, v = random_qkv(L=16)
    core = lsh_core(bucket_size=16, n_hashes=3, causal=causal).eval()
    out = core(qk, k, v, None)
    for b in range(2):
        for h in range(2):
            ref = full_shared_qk(qk[b, h], v[b, h], causal)
            torch.testing.assert_close(out[b, h], ref, rtol=1e-10, atol=1e-10)


def test_causal_lsh_with_one_bucket_equals_full_causal_attention(monkeypatch):
    # One bucket sorts by position; with two chunks every earlier key is in reach.
    qk, k, v = random_qkv(L=32)
    core = lsh_core(bucket_size=16, n_hashes=2, causal=True).eval()
    monkeypatch.setattr(
        core, "buckets", lambda x, valid, R, *_: torch.zeros(2, 2, R, 32, dtype=torch.long)
    )
    out = core(qk, k, v, None)
    ref = torch.stack(
        [torch.stack([full_shared_qk(qk[b, h], v[b, h], True) for h in range(2)]) for b in range(2)]
    )
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    full = FullAttentionCore(causal=True, shared_qk=True)(qk, k, v, None)
    torch.testing.assert_close(full, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dedup", [False, True])
def test_multi_round_merge_equals_appendix_a(causal, dedup):
    qk, k, v = random_qkv(B=1, L=32)
    valid = torch.ones(1, 32, dtype=torch.bool)
    valid[0, 27:] = False
    core = lsh_core(bucket_size=4, n_hashes=3, causal=causal, allow_duplicate_attention=not dedup)
    plan: dict = {}
    out = core(qk, k, v, valid, plan=plan)
    order = plan["order0"].long()  # (B, H, R, L)
    for h in range(2):
        ref = lsh_rounds(qk[0, h], v[0, h], order[0, h], 4, causal, valid[0], dedup)
        torch.testing.assert_close(out[0, h, :27], ref[:27], rtol=1e-9, atol=1e-9)


def test_dedup_changes_outputs_when_rounds_overlap():
    qk, k, v = random_qkv(B=1, L=32)
    a = lsh_core(bucket_size=8, n_hashes=4).eval()(qk, k, v, None)
    b = lsh_core(bucket_size=8, n_hashes=4, allow_duplicate_attention=False).eval()(qk, k, v, None)
    assert not torch.allclose(a, b)


def test_sort_is_by_bucket_then_position_and_padding_sorts_last():
    qk, k, v = random_qkv(B=1, L=32)
    valid = torch.ones(1, 32, dtype=torch.bool)
    valid[0, 5] = valid[0, 30] = False
    core = lsh_core(bucket_size=8, n_hashes=2).eval()
    plan: dict = {}
    core(qk, k, v, valid, plan=plan)
    order = plan["order0"].long()[0]  # (H, R, L)
    buckets = core.buckets(qk, valid, 2)[0]  # (H, R, L)
    sorted_buckets = buckets.gather(-1, order)
    assert (sorted_buckets[..., 1:] >= sorted_buckets[..., :-1]).all()
    same = sorted_buckets[..., 1:] == sorted_buckets[..., :-1]
    assert (order[..., 1:] > order[..., :-1])[same].all()
    assert set(order[..., -2:].flatten().tolist()) == {5, 30}


@pytest.mark.parametrize("n_ids", [2, 8193, 1 << 16, (1 << 16) + 1])
def test_compact_bucket_ids_sort_as_the_buckets_do(n_ids):
    # ids up to 2^16 are kept in int16, shifted (2 bytes where the order took 4); beyond, int32.
    buckets = torch.randint(0, n_ids, (2, 3, 4, 500), dtype=torch.int32)
    buckets[0, 0, 0, :2] = torch.tensor([0, n_ids - 1])  # both ends of the range
    ids = sortable_ids(buckets, n_ids)
    assert ids.dtype == (torch.int16 if n_ids <= 1 << 16 else torch.int32)
    expected = torch.sort(buckets.long(), dim=-1, stable=True).indices
    order = sort_order(ids)
    assert order.dtype == torch.int32 and torch.equal(order.long(), expected)


def test_hash_is_argmax_of_rotation_and_its_negation():
    x = torch.randn(1, 2, 10, 8)
    rot = torch.randn(2, 3, 8, 4)
    buckets = hash_vectors(x, [rot], (8,))
    for h in range(2):
        for r in range(3):
            rotated = x[0, h] @ rot[h, r]  # (L, 4)
            expected = torch.cat([rotated, -rotated], -1).argmax(-1)
            assert torch.equal(buckets[0, h, r], expected)
    assert buckets.min() >= 0 and buckets.max() < 8


def test_many_buckets_factorise_into_small_even_hashes_covering_the_count():
    for n in (2, 64, 130, 258, 2048, 32768, 131072):
        assert all(f <= 64 for f in bucket_factors(n)) or len(bucket_factors(n)) == 1
        factors = bucket_factors(n)
        assert all(f % 2 == 0 for f in factors)
        assert n <= torch.tensor(factors).prod() <= 1.15 * n
    assert bucket_factors(128) == (128,)
    assert max(bucket_factors(131072)) <= 64


def test_hash_rounds_use_different_rotations_and_similar_vectors_collide():
    core = lsh_core(bucket_size=8, n_hashes=4, n_buckets=16).eval()
    x = torch.randn(1, 2, 64, 8)
    b = core.buckets(x, None, 4)
    assert not torch.equal(b[:, :, 0], b[:, :, 1])  # fresh rotations per round
    near = x + 1e-4 * torch.randn_like(x)
    assert (core.buckets(near, None, 4) == b).float().mean() > 0.95


def test_local_attention_equals_windowed_brute_force():
    qk, k, v = random_qkv(B=1, L=24)
    out = LocalAttentionCore(bucket_size=8, causal=True, backend="torch")(qk, k, v, None)
    for h in range(2):
        for i in range(24):
            c = i // 8
            window = [j for j in range(max(0, c - 1) * 8, (c + 1) * 8) if j <= i]
            ref = full_shared_qk(qk[0, h, window], v[0, h, window], True)[window.index(i)]
            torch.testing.assert_close(out[0, h, i], ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [True, False])
def test_full_attention_with_padding_matches_brute_force(causal):
    qk, k, v = random_qkv(B=1, L=12)
    valid = torch.ones(1, 12, dtype=torch.bool)
    valid[0, :3] = False  # left padding: the first real token has only padding before it
    out = FullAttentionCore(causal=causal, shared_qk=True)(qk, k, v, valid)
    for h in range(2):
        ref = full_shared_qk(qk[0, h], v[0, h], causal, valid[0])
        torch.testing.assert_close(out[0, h, 3:], ref[3:], rtol=1e-10, atol=1e-10)
    assert torch.isfinite(out).all()


def test_chunked_rows_with_every_key_masked_stay_finite_in_low_precision():
    for dtype in (torch.float16, torch.bfloat16):
        q = torch.randn(2, 16, 8).to(dtype)
        pos = torch.arange(16).expand(2, 16)
        valid = torch.zeros(2, 16, dtype=torch.bool)
        out, lse = chunked_attention_torch(q, q, q, pos, 8, scale=0.3, causal=True, key_valid=valid)
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()


@pytest.mark.parametrize("dedup", [False, True])
@pytest.mark.parametrize("across", [True, False])
def test_round_by_round_backward_matches_numerical_gradients(dedup, across):
    # The merged rounds' custom backward recomputes one round at a time; gradcheck compares
    # it with finite differences, the hash order held fixed.
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1, 16, 4, generator=g, dtype=torch.float64) for _ in range(3))
    valid = torch.ones(1, 16, dtype=torch.bool)
    valid[0, 13:] = False
    core = lsh_core(
        bucket_size=4,
        n_hashes=3,
        causal=True,
        allow_duplicate_attention=not dedup,
        attend_across_buckets=across,
    )
    core.heads, core.head_dim = 1, 4
    plan: dict = {}
    core(q, k, v, valid, plan=plan)  # fixes the order (and buckets) for every later call

    def attend(q, k, v):
        return core(q, k, v, valid, plan=plan)[:, :, :13]

    inputs = tuple(x.clone().requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(attend, inputs, eps=1e-6, atol=1e-7)


def test_blocked_factorised_hash_equals_the_product_of_argmax_hashes(monkeypatch):
    import reformer_lab.model.attention.hashing as hashing

    monkeypatch.setattr(hashing, "HASH_BLOCK_ELEMENTS", 64)  # many position blocks
    x = torch.randn(2, 3, 50, 8)
    factors = (6, 4)
    rots = [torch.randn(3, 2, 8, f // 2) for f in factors]
    buckets = hash_vectors(x, rots, factors)
    for r in range(2):
        expected = 0
        stride = 1
        for rot, n in zip(rots, factors):
            rotated = torch.einsum("bhld,hdk->bhlk", x, rot[:, r])
            expected = expected + torch.cat([rotated, -rotated], -1).argmax(-1) * stride
            stride *= n
        assert torch.equal(buckets[:, :, r], expected)


def test_shared_keys_keep_the_query_dtype_under_autocast():
    q = torch.randn(1, 2, 8, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k = normalize_keys(q)
    assert k.dtype == torch.bfloat16
    torch.testing.assert_close(k.float().norm(dim=-1), torch.ones(1, 2, 8), atol=1e-2, rtol=0)
