"""The CUDA-graph training step: staged LSH rotations hash exactly as the eager step (CPU), the
captured step's losses and gradients equal eager steps' (GPU), and bad input fails first."""

from __future__ import annotations

import copy

import pytest
import torch

from reformer_lab.model import ReformerConfig, ReformerLM
from reformer_lab.model.attention.lsh import LSHAttentionCore
from reformer_lab.model.captured_step import CapturedTrainingStep

ON_GPU = torch.cuda.is_available()


def config(**kw) -> ReformerConfig:
    base = dict(vocab_size=19, dim=32, depth=2, heads=2, max_seq_len=256, bucket_size=16,
                n_hashes=2, seed=3, dropout=0.0)  # fmt: skip
    return ReformerConfig(**{**base, **kw})


def cores(model: ReformerLM) -> list[LSHAttentionCore]:
    return [m for m in model.modules() if isinstance(m, LSHAttentionCore)]


def eager_step(model: ReformerLM, tokens: torch.Tensor, targets: torch.Tensor):
    model.zero_grad(set_to_none=True)
    loss = model.loss(tokens, targets).loss
    loss.backward()
    return loss.detach().clone(), [p.grad.clone() for p in model.parameters()]


def test_staged_rotations_hash_as_the_eager_step_and_keep_their_buffers():
    torch.manual_seed(0)
    eager = ReformerLM(config())
    staged = copy.deepcopy(eager)
    for core in cores(staged):
        core.stage_rotations()
    tokens, targets = torch.randint(0, 19, (2, 2, 256)).unbind(0)
    losses, addresses = [], set()
    for _ in range(3):
        want, want_grads = eager_step(eager, tokens, targets)
        for core in cores(staged):
            core.next_staged_step()
        got, got_grads = eager_step(staged, tokens, targets)
        assert torch.equal(got, want)
        assert all(torch.equal(g, w) for g, w in zip(got_grads, want_grads))
        addresses.add(
            tuple(r.data_ptr() for c in cores(staged) for b in c._staged.values() for r in b)
        )
        losses.append(want)
    steps = [int(c.hash_step) for c in cores(staged)]
    assert steps == [int(c.hash_step) for c in cores(eager)] == [3, 3]
    assert len(addresses) == 1  # refilled in place: what a graph replay reads
    assert not torch.equal(losses[0], losses[1])  # fresh rotations every step


def test_staged_cores_return_to_the_eager_mode():
    model = ReformerLM(config())
    tokens = torch.randint(0, 19, (1, 256))
    for core in cores(model):
        core.stage_rotations()
        core.next_staged_step()
    model.loss(tokens, tokens)
    for core in cores(model):
        core.stage_rotations(False)
    model.loss(tokens, tokens)  # the eager forward counts its own step again
    assert [int(c.hash_step) for c in cores(model)] == [2, 2]


@pytest.mark.parametrize(
    "case, match",
    [
        ("cpu", "needs CUDA tensors"),
        ("shape", "of one shape"),
        ("dropout", "dropout 0.1 cannot be captured"),
        ("eval", "training mode"),
        ("warmup", "warmup_steps"),
    ],
)
def test_bad_input_fails_before_any_step(case, match):
    model = ReformerLM(config(dropout=0.1 if case == "dropout" else 0.0))
    device = "cpu" if case == "cpu" or not ON_GPU else "cuda"
    if case != "cpu" and not ON_GPU:
        pytest.skip("the later checks need CUDA inputs")
    model.to(device)
    if case == "eval":
        model.eval()
    tokens = torch.randint(0, 19, (1, 256), device=device)
    targets = tokens[:, :128] if case == "shape" else tokens
    with pytest.raises(ValueError, match=match):
        CapturedTrainingStep(model, tokens, targets, warmup_steps=0 if case == "warmup" else 1)
    assert all(p.grad is None for p in model.parameters())
    assert all(int(c.hash_step) == 0 for c in cores(model))


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("backend, offload", [("torch", False), ("auto", False), ("auto", True)])
def test_captured_step_equals_eager_steps(backend, offload):
    """offload: the streams in host memory, so the graph replays copies to and from it."""
    torch.manual_seed(0)
    eager = ReformerLM(config(backend=backend, bucket_size=64 if backend == "auto" else 16,
                              max_seq_len=1024, offload_streams=offload,
                              ff_chunks=4 if offload else 1)).cuda()  # fmt: skip
    captured = copy.deepcopy(eager)
    tokens, targets = torch.randint(0, 19, (2, 1, 1024), device="cuda").unbind(0)
    step = CapturedTrainingStep(captured, tokens, targets)
    for i in range(3):
        fresh, fresh_targets = torch.randint(0, 19, (2, 1, 1024), device="cuda").unbind(0)
        with torch.autocast("cuda", torch.bfloat16):
            want, want_grads = eager_step(eager, fresh, fresh_targets)
        if i == 2:  # as Lightning does before validating: the next call puts them back
            captured.zero_grad(set_to_none=True)
        got = step(fresh, fresh_targets).clone()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        for p, w in zip(captured.parameters(), want_grads):
            torch.testing.assert_close(p.grad, w, rtol=2e-2, atol=1e-4)
    assert [int(c.hash_step) for c in cores(captured)] == [int(c.hash_step) for c in cores(eager)]
    with pytest.raises(ValueError, match="captured step takes"):
        step(tokens[:, :512], targets[:, :512])
    with pytest.raises(ValueError, match="token ids span"):  # checked before the replay
        step(torch.full_like(tokens, 19), targets)
