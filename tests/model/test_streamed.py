"""offload_streams: the residual streams in host memory, a chunk at a time on the device.

The streamed loss must be the same function, with the same gradients, as the reversible
layers with the streams on the device (`reversible.py` + `head_loss.py`), and must never form
a whole (B, L, dim) tensor of the streams' dtype on the device."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from reformer_lab.model import ReformerConfig, ReformerLM
from reformer_lab.model.attention.lsh import LSHAttentionCore
from reformer_lab.model.config import ConfigError


def config(**kw) -> ReformerConfig:
    base = dict(vocab_size=17, dim=16, depth=3, heads=2, max_seq_len=64, bucket_size=8,
                n_hashes=2, dropout=0.0, ff_chunks=3, seed=3)  # fmt: skip
    base.update(kw)
    return ReformerConfig(**base)


def twins(dtype=torch.float64, **kw) -> tuple[ReformerLM, ReformerLM]:
    """The same weights with the streams on the device and offloaded."""
    torch.manual_seed(0)
    on_device = ReformerLM(config(**kw)).to(dtype)
    offloaded = ReformerLM(config(offload_streams=True, **kw)).to(dtype)
    offloaded.load_state_dict(on_device.state_dict())
    return on_device, offloaded


def step(model: ReformerLM, tokens: torch.Tensor, **loss_kw):
    model.zero_grad(set_to_none=True)
    out = model.loss(tokens, torch.roll(tokens, -1, 1), **loss_kw)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return out.loss.detach(), int(out.n_correct), int(out.n_tokens), grads


def assert_same_steps(on_device, offloaded, tokens, tol, **loss_kw) -> None:
    loss_a, correct_a, count_a, grads_a = step(on_device, tokens, **loss_kw)
    loss_b, correct_b, count_b, grads_b = step(offloaded, tokens, **loss_kw)
    assert abs(loss_a - loss_b) <= tol * abs(loss_a)
    assert (correct_a, count_a) == (correct_b, count_b)
    for name, g in grads_a.items():
        assert g is not None and g.abs().sum() > 0, f"{name} got no gradient"
        err = (grads_b[name] - g).norm() / g.norm()
        assert err <= tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize(
    "kw",
    [
        dict(attention="lsh"),
        dict(attention="lsh", attn_chunks=1),  # all heads at once: the int32 order kept
        dict(attention="local"),
        dict(attention="full", shared_qk=False),  # separate keys: q, k, v columns
        dict(attention=["lsh", "full", "local"]),
        dict(attention="lsh", depth=1, ff_chunks=1),  # one layer, one chunk
        dict(attention="lsh", attend_across_buckets=False, causal=False),
    ],
)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_streamed_loss_equals_the_streams_on_the_device(kw, dtype, tol):
    on_device, offloaded = twins(dtype, **kw)
    tokens = torch.randint(0, 17, (2, 37))  # not a multiple of the chunk: padding too
    assert_same_steps(on_device, offloaded, tokens, tol)
    assert_same_steps(on_device, offloaded, tokens, tol)  # a second step, new rotations
    steps = [
        [m.steps_counted for m in model.modules() if isinstance(m, LSHAttentionCore)]
        for model in (on_device, offloaded)
    ]
    assert steps[0] == steps[1]


def test_padding_mask_and_hash_rounds_override_pass_through():
    on_device, offloaded = twins()
    tokens = torch.randint(0, 17, (2, 40))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[0, 30:] = False
    assert_same_steps(on_device, offloaded, tokens, 1e-9, key_padding_mask=mask, n_hashes=3)


def test_eval_loss_without_gradients_is_the_same():
    on_device, offloaded = twins()
    tokens = torch.randint(0, 17, (2, 40))
    with torch.no_grad():
        a, b = (m.eval().loss(tokens, torch.roll(tokens, -1, 1)) for m in (on_device, offloaded))
    assert abs(a.loss - b.loss) <= 1e-12 and a.n_correct == b.n_correct


def test_host_buffers_hold_the_streams_and_are_reused():
    on_device, offloaded = twins()
    tokens = torch.randint(0, 17, (2, 40))
    with torch.no_grad():
        offloaded.loss(tokens, tokens)
        y1, y2 = on_device.streams(tokens)  # (2, 40, 16) each
    (host,) = offloaded.host_streams._sets.values()
    torch.testing.assert_close(host["y1"][:, :40], y1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(host["y2"][:, :40], y2, rtol=1e-12, atol=1e-12)
    pointers = [t.data_ptr() for t in host.values()]
    step(offloaded, tokens)
    (again,) = offloaded.host_streams._sets.values()
    assert [t.data_ptr() for t in again.values()] == pointers  # the same memory every step
    assert offloaded.host_streams.nbytes == 4 * 2 * 40 * 16 * 8
    copied = copy.deepcopy(offloaded)  # scratch space is not copied or pickled
    assert copied.host_streams.nbytes == 0 and copied.host_streams is not offloaded.host_streams
    assert pickle.loads(pickle.dumps(offloaded)).host_streams.nbytes == 0
    offloaded.host_streams.release()
    assert offloaded.host_streams.nbytes == 0


class LargestStreamLike(TorchDispatchMode):
    """The most elements of any new fp32 storage an operator creates for a tensor whose rows
    are `width` wide (a stream, or a piece of one); views and in-place results are not new."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width, self.largest = width, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if (
                isinstance(t, torch.Tensor)
                and t.dtype == torch.float32
                and t.dim() >= 2
                and t.shape[-1] == self.width
                and t.untyped_storage().data_ptr() not in inputs
            ):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // 4)
        return out


@pytest.mark.parametrize("offload", [False, True])
def test_no_whole_stream_is_formed_when_offloaded(offload):
    """The property the offload is for: no operator makes a (B, L, dim) tensor of the streams'
    dtype (the host buffers exist from the step before; the meter sees the second step)."""
    torch.manual_seed(0)
    dim = 24  # rows of no other tensor of the step are this wide (2 heads of 8, buckets of 8)
    model = ReformerLM(
        config(dim=dim, dim_head=8, max_seq_len=512, ff_chunks=8, offload_streams=offload)
    )
    tokens = torch.randint(0, 17, (2, 512))
    step(model, tokens)
    with LargestStreamLike(dim) as meter:
        step(model, tokens)
    whole_stream = 2 * 512 * dim
    if offload:  # a chunk of 64 positions at a time (a weight's gradient is smaller)
        assert 0 < meter.largest <= whole_stream // 8
    else:
        assert meter.largest >= whole_stream


def test_offload_is_refused_with_dropout_or_without_reversible_layers():
    with pytest.raises(ConfigError, match="dropout=0"):
        config(offload_streams=True, dropout=0.1)
    with pytest.raises(ConfigError, match="reversible=True"):
        config(offload_streams=True, reversible=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory and kernels: CUDA")
def test_on_cuda_with_the_kernels_as_on_the_device_and_in_less_memory():
    """bf16 autocast, the fused kernels: the same loss and gradients as the streams on the
    device (up to the rounding of chunk-sized matmuls), the host buffers page-locked, and a
    peak below the four fp32 streams the device path holds."""
    kw = dict(vocab_size=256, dim=64, depth=2, heads=4, bucket_size=16, n_hashes=4,
              max_seq_len=1 << 16, ff_chunks=8, backend="auto")  # fmt: skip
    on_device, offloaded = (m.cuda() for m in twins(torch.float32, **kw))
    tokens = torch.randint(0, 256, (1, 1 << 16), device="cuda")
    peaks, results = [], []
    for model in (on_device, offloaded):
        step(model, tokens)  # warm-up: kernels compiled, host buffers made
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", torch.bfloat16):
            results.append(step(model, tokens))
        peaks.append(torch.cuda.max_memory_allocated() - base)
    (loss_a, correct_a, _, grads_a), (loss_b, correct_b, _, grads_b) = results
    assert abs(loss_a - loss_b) <= 1e-3 * abs(loss_a)
    assert abs(correct_a - correct_b) <= 1e-3 * (1 << 16)
    for name, g in grads_a.items():
        err = (grads_b[name] - g).norm() / g.norm()
        assert err <= 2e-2, f"{name}: relative error {err:.2e}"
    (host,) = offloaded.host_streams._sets.values()
    assert all(t.is_pinned() for t in host.values())
    four_streams = 4 * (1 << 16) * 64 * 4
    assert peaks[1] < peaks[0] - four_streams // 2, peaks
