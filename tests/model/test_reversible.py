"""Reversible layers: same function and gradients as the plain residual network, flat memory."""

from __future__ import annotations

import pytest
import torch

from reformer_lab.model import ReformerConfig, ReformerLM


def tiny(**kw) -> ReformerConfig:
    base = dict(
        vocab_size=17,
        dim=16,
        depth=2,
        heads=2,
        max_seq_len=64,
        bucket_size=8,
        n_hashes=2,
        dropout=0.1,
        ff_chunks=3,
        seed=3,
    )
    base.update(kw)
    return ReformerConfig(**base)


def loss_and_grads(model: ReformerLM, tokens: torch.Tensor, rng_seed: int = 0):
    model.zero_grad()
    torch.manual_seed(rng_seed)  # same dropout masks for both networks
    out = model.loss(tokens, torch.roll(tokens, -1, 1))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def twins(dtype=torch.float64, **kw) -> tuple[ReformerLM, ReformerLM]:
    torch.manual_seed(0)
    rev = ReformerLM(tiny(reversible=True, **kw)).to(dtype)
    plain = ReformerLM(tiny(reversible=False, **kw)).to(dtype)
    plain.load_state_dict(rev.state_dict())
    return rev, plain


@pytest.mark.parametrize("attention", ["lsh", "local", "full", ["lsh", "full"]])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_reversible_equals_plain_residual_with_dropout(attention, dtype, tol):
    rev, plain = twins(dtype, attention=attention)
    tokens = torch.randint(0, 17, (2, 37))  # not a multiple of the chunk: padding too
    loss_r, grads_r = loss_and_grads(rev, tokens)
    loss_p, grads_p = loss_and_grads(plain, tokens)
    assert abs(loss_r - loss_p) <= tol * abs(loss_p)
    for name, g in grads_p.items():
        err = (grads_r[name] - g).norm() / g.norm().clamp(min=1e-30)
        assert err <= tol, f"{name}: relative error {err:.2e}"
        assert g.abs().sum() > 0, f"{name} got no gradient"


def test_dropout_masks_are_replayed_not_redrawn():
    # With replay broken, the recomputed branch would differ and gradients with it.
    rev, plain = twins(torch.float64, dropout=0.5)
    tokens = torch.randint(0, 17, (1, 40))
    _, grads_r = loss_and_grads(rev, tokens, rng_seed=1)
    _, grads_p = loss_and_grads(plain, tokens, rng_seed=1)
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_r[name], g, rtol=1e-9, atol=1e-12)


def test_parameters_get_gradients_when_inputs_need_none():
    model = ReformerLM(tiny())
    model.token_emb.weight.requires_grad_(False)
    for p in model.pos_emb.parameters():
        p.requires_grad_(False)
    tokens = torch.randint(0, 17, (2, 32))
    model.loss(tokens, tokens).loss.backward()
    for name, p in model.layers.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def saved_bytes(model: ReformerLM, tokens: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss(tokens, tokens).loss  # what the forward pass keeps for backward
    loss.backward()
    return total


@pytest.mark.parametrize("attention, attn_chunks", [("local", 1), ("lsh", 1), ("lsh", 2)])
def test_bytes_saved_for_backward_stay_flat_with_depth_when_reversible(attention, attn_chunks):
    B, N, heads, R = 2, 64, 2, 2
    tokens = torch.randint(0, 17, (B, N))
    sizes = {}
    for reversible in (True, False):
        for depth in (2, 8):
            torch.manual_seed(0)
            cfg = tiny(
                depth=depth,
                attention=attention,
                reversible=reversible,
                dropout=0.0,
                n_hashes=R,
                heads=heads,
                attn_chunks=attn_chunks,
            )
            sizes[reversible, depth] = saved_bytes(ReformerLM(cfg), tokens)
    growth_rev = sizes[True, 8] - sizes[True, 2]
    growth_plain = sizes[False, 8] - sizes[False, 2]
    # Reversible: only the LSH hashing per layer is kept, per token, head and round: the
    # int32 sort order with all heads at once, the int16 bucket ids with heads in groups.
    plan_bytes = B * heads * R * N * (4 if attn_chunks == 1 else 2) if attention == "lsh" else 0
    assert growth_rev == 6 * plan_bytes
    # Plain: at least the two residual streams of every extra layer (fp32).
    assert growth_plain > 6 * 2 * B * N * 16 * 4
    assert growth_plain > 10 * max(growth_rev, 1)


def test_reversible_backward_reuses_forward_buckets():
    # A hash redrawn in the backward pass would not match the forward's sort order; counting
    # the rotation draws shows it is not: one draw per layer per training step.
    model = ReformerLM(tiny(dropout=0.0))
    tokens = torch.randint(0, 17, (1, 32))
    model.loss(tokens, tokens).loss.backward()
    steps = [int(layer.f.attention.core.hash_step) for layer in model.layers]
    assert steps == [1, 1]


@pytest.mark.parametrize(
    "attention, across", [("lsh", True), ("lsh", False), ("local", True), ("full", True)]
)
def test_head_groups_change_nothing_but_memory(attention, across):
    # attn_chunks=2 computes heads {0}, {1} separately, in forward and in the reversible
    # recomputation (dropout mask replayed once for the summed output); LSH keeps the sort
    # order with one group and the bucket ids with two (across=False: they also mask keys).
    torch.manual_seed(0)
    cfg = dict(attention=attention, attend_across_buckets=across)
    whole = ReformerLM(tiny(attn_chunks=1, **cfg)).double()
    grouped = ReformerLM(tiny(attn_chunks=2, **cfg)).double()
    grouped.load_state_dict(whole.state_dict())
    tokens = torch.randint(0, 17, (2, 37))
    loss_w, grads_w = loss_and_grads(whole, tokens)
    loss_g, grads_g = loss_and_grads(grouped, tokens)
    assert abs(loss_w - loss_g) <= 1e-9 * abs(loss_w)
    for name, g in grads_w.items():
        torch.testing.assert_close(grads_g[name], g, rtol=1e-8, atol=1e-12)


def test_head_groups_bound_the_heads_computed_at_once():
    model = ReformerLM(tiny(heads=4, attn_chunks=2, dropout=0.0))
    seen = []
    for layer in model.layers:
        core = layer.f.attention.core
        core.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    tokens = torch.randint(0, 17, (1, 32))
    model.loss(tokens, tokens).loss.backward()
    # 2 layers x 2 groups in the forward pass and again in the backward recomputation.
    assert seen == [2] * 8


def test_incoming_gradients_are_overwritten_only_when_they_are_separate_buffers():
    from reformer_lab.model.reversible import writable

    both = torch.zeros(2, 5, 8)
    assert writable(both[..., :4], both[..., 4:])  # the halves of the gradient of a cat
    assert writable(torch.zeros(2, 5, 4), torch.zeros(2, 5, 4))
    assert not writable(both[..., :4], both[..., :4])  # one buffer passed twice
    assert not writable(both[..., :4], both[..., 2:6])  # overlapping
    assert not writable(torch.zeros(4).expand(2, 5, 4), torch.zeros(2, 5, 4))  # broadcast
    assert not writable(both[..., 0:4:2], both[..., 1:5:2])  # interleaved columns


def test_a_group_output_already_in_its_columns_is_recognised_as_such():
    from reformer_lab.strided import same_elements

    wide = torch.zeros(1, 6, 8)
    cols = wide[..., :4]
    assert same_elements(cols, cols.as_strided(cols.shape, (999, 8, 1)))  # size-1 dim's stride
    assert not same_elements(cols, wide[..., 4:])  # other columns
    assert not same_elements(cols, cols.clone())  # a copy
    assert not same_elements(cols, wide[..., :4].transpose(1, 2).transpose(1, 2)[:, :5])
    assert not same_elements(wide[0, :4, :4], wide[0, :4, :4].T)  # same start, other order


@pytest.mark.parametrize("attn_chunks", [1, 2])
@pytest.mark.parametrize("dropout", [0.3, 0.0])
def test_attention_branch_recompute_writes_into_the_streams(attn_chunks, dropout, monkeypatch):
    """recompute_backward subtracts F(x) from y and adds dF/dx^T grad into dx in place, group by
    group, with the forward's dropout mask replayed (or, without dropout, the output projection
    a sequence chunk at a time: 5 chunks here); parameter gradients are returned."""
    from reformer_lab.model import lm
    from reformer_lab.model.lm import AttentionBranch
    from reformer_lab.model.reversible import RngState

    monkeypatch.setattr(lm, "PROJECTION_CHUNK_ELEMENTS", 2 * 7 * 16)  # 7 positions a chunk
    torch.manual_seed(0)
    cfg = tiny(attention="local", heads=4, dim=16, attn_chunks=attn_chunks, dropout=dropout)
    branch = AttentionBranch(cfg, "local", 0).double().train()
    x = torch.randn(2, 32, 16, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 32, 16, dtype=torch.float64)
    rng = RngState(x.device)
    f = branch(x, None)  # the forward pass, its dropout drawn after `rng`
    expected = torch.autograd.grad(f, [x, *branch.parameters()], grad)
    y, dx = torch.randn_like(grad), torch.randn_like(grad)
    y0, dx0 = y.clone(), dx.clone()
    params = branch.recompute_backward(x.detach(), grad, None, None, {}, rng, y=y, dx=dx)
    torch.testing.assert_close(y, y0 - f.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, dx0 + expected[0], rtol=1e-10, atol=1e-12)
    for got, want in zip(params, expected[1:]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if not dropout:  # the reversible forward's in-place form adds what was subtracted
        assert len(branch.projection_chunks(x)) == 5
        branch.add_into(y, x.detach(), None)
        torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)


def test_head_groups_share_one_layer_norm_and_one_projection_per_chunk(monkeypatch):
    """add_into with 4 head groups: LN(x) formed once, and the output projection (all heads'
    columns of W) applied once per projection chunk, in the forward and in the recomputation's
    subtraction alike, which still restores y."""
    from reformer_lab.model import lm
    from reformer_lab.model.lm import AttentionBranch
    from reformer_lab.model.reversible import RngState

    monkeypatch.setattr(lm, "PROJECTION_CHUNK_ELEMENTS", 2 * 8 * 16)  # 8 positions a chunk
    torch.manual_seed(0)
    cfg = tiny(attention="local", heads=4, dim=16, attn_chunks=4, dropout=0.0)
    branch = AttentionBranch(cfg, "local", 0).double()
    norms, projections = [], []
    real_norm, real_linear = lm.layer_norm_to, lm.F.linear
    monkeypatch.setattr(lm, "layer_norm_to", lambda *a, **k: norms.append(1) or real_norm(*a, **k))

    def linear(inp, weight, bias=None):
        if weight is branch.attention.to_out.weight:
            projections.append(inp.shape)
        return real_linear(inp, weight, bias)

    monkeypatch.setattr(lm.F, "linear", linear)
    x = torch.randn(2, 32, 16, dtype=torch.float64)
    y = torch.randn(2, 32, 16, dtype=torch.float64)
    y0 = y.clone()
    branch.add_into(y, x, None)
    assert len(norms) == 1 and projections == [(2, 8, 16)] * 4  # 4 chunks of all 16 columns
    monkeypatch.setattr(lm.F, "linear", real_linear)
    expected = y - y0
    torch.testing.assert_close(expected, branch(x, None).detach(), rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(lm.F, "linear", linear)
    projections.clear()
    grad = torch.randn_like(y)
    branch.recompute_backward(
        x, grad, None, None, {}, RngState(x.device), y=y, dx=torch.zeros_like(x)
    )
    assert projections == [(2, 8, 16)] * 4
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("attn_chunks", [1, 2])
def test_reversible_equals_plain_without_dropout_in_projection_chunks(attn_chunks, monkeypatch):
    """Without dropout the reversible passes add and subtract the branches' outputs in place,
    the attention's output projection in sequence chunks: still the plain network's loss and
    gradients."""
    from reformer_lab.model import lm

    monkeypatch.setattr(lm, "PROJECTION_CHUNK_ELEMENTS", 2 * 9 * 16)  # 9 positions a chunk
    rev, plain = twins(torch.float64, dropout=0.0, attn_chunks=attn_chunks)
    tokens = torch.randint(0, 17, (2, 37))
    loss_r, grads_r = loss_and_grads(rev, tokens)
    loss_p, grads_p = loss_and_grads(plain, tokens)
    assert abs(loss_r - loss_p) <= 1e-9 * abs(loss_p)
    for name, g in grads_p.items():
        torch.testing.assert_close(grads_r[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_auto_head_groups_follow_the_input_size(monkeypatch):
    """attn_chunks="auto": base-sized heads (8 of d 64) in one group at 64K tokens, two at
    128K and at 256K, one at a time at 1M; tiny's (4 of d 16 at d 64) in one group at 64K, two at 1M; and
    grouped by auto, the model computes what it computes whole."""
    from reformer_lab.model import lm

    def groups(dim: int, heads: int, lengths: tuple[int, ...]) -> dict[int, int]:
        branch = lm.AttentionBranch(tiny(dim=dim, heads=heads, attn_chunks="auto"), "lsh", 0)
        return {n: len(branch.head_groups(torch.empty(1, n, dim, device="meta"))) for n in lengths}

    assert groups(512, 8, (1 << 16, 1 << 17, 1 << 18, 1 << 20)) == {
        1 << 16: 1, 1 << 17: 2, 1 << 18: 2, 1 << 20: 8}  # fmt: skip
    assert groups(64, 4, (1 << 16, 1 << 20)) == {1 << 16: 1, 1 << 20: 2}

    monkeypatch.setattr(lm, "AUTO_GROUP_ELEMENTS", 6 * 2 * 37 * 8)  # one head per group here
    whole = ReformerLM(tiny(attn_chunks=1, dropout=0.0)).double()
    auto = ReformerLM(tiny(attn_chunks="auto", dropout=0.0)).double()
    auto.load_state_dict(whole.state_dict())
    assert len(auto.layers[0].f.head_groups(torch.empty(2, 40, 16))) == 2
    tokens = torch.randint(0, 17, (2, 37))
    _, grads_whole = loss_and_grads(whole, tokens)
    _, grads_auto = loss_and_grads(auto, tokens)
    for name, g in grads_whole.items():
        torch.testing.assert_close(grads_auto[name], g, rtol=1e-9, atol=1e-12)


def test_reversible_forward_copies_the_streams_once_whatever_the_depth(monkeypatch):
    """The reversible forward copies the two input streams once and every layer adds into those
    buffers in place; the caller's streams are left as they were."""
    from reformer_lab.model import reversible

    model = ReformerLM(tiny(depth=4, dropout=0.0, attention="local"))  # no hashes redrawn
    x1, x2 = torch.randn(2, 1, 32, 16).unbind(0)
    x1_before, x2_before = x1.clone(), x2.clone()
    copies = []
    real_clone = torch.Tensor.clone

    def clone(t, *a, **k):
        if t.shape == x1.shape:
            copies.append(t.data_ptr())
        return real_clone(t, *a, **k)

    monkeypatch.setattr(torch.Tensor, "clone", clone)
    y1, y2 = reversible.run_layers(model.layers, x1.requires_grad_(), x2, None, None, True)
    monkeypatch.setattr(torch.Tensor, "clone", real_clone)
    assert copies == [x1.data_ptr(), x2.data_ptr()]
    assert torch.equal(x1.detach(), x1_before) and torch.equal(x2, x2_before)
    plain = x1_before, x2_before
    for layer in model.layers:
        plain = layer(*plain, None, None)
    torch.testing.assert_close((y1, y2), plain, rtol=1e-5, atol=1e-6)
