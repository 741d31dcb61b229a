"""GPU check and timing of the fused kernels (reformer_lab.kernels): the chunked-attention
kernel, and the fused LSH round kernels that the model runs on CUDA (lsh_rounds.py).

    python3 experiments/benchmarks/kernel_check.py            # ~3 min on an H100
    python3 experiments/benchmarks/kernel_check.py --quick    # correctness only
    python3 experiments/benchmarks/kernel_check.py --tune-only  # section 4 alone
    python experiments/benchmarks/kernel_check.py --smoke     # CPU dry run, tiny sizes (tests the script)

1. Chunked kernel correctness: fresh random LSH-like inputs (pos = each group's positions
   sorted by random buckets), kernel vs `chunked_attention_torch` in float64 on the very inputs
   the kernel got; out, lse and the gradients of sum(out * w) + sum(lse * u). Relative error
   ||got - ref|| / ||ref|| must stay under 1e-2 (bf16, fp16) or 1e-4 (fp32, tf32x3 products);
   the column `torch` gives the torch reference's own error in the input dtype, for scale.
   Outputs are poisoned with NaN first to catch unwritten elements.
2. Fused LSH rounds correctness: `lsh_rounds_forward` / `lsh_rounds_backward` vs the model's
   torch path (`merge_rounds` and autograd through it, backend 'torch') in float32 (see
   `torch_oracle` for why not float64) on the same inputs, at the base (B=1, H=8, L=64K, d=C=64, R=4) and tiny (H=4, d=C=16) shapes in bf16
   and a few others; q, k, v in the (B, L, H, d) layout the projections give. Same tolerances;
   the column `per-round` gives the error of the path the model ran before (sorted copies,
   chunked kernel, torch glue), for scale. Also checks that a bf16 ReformerLM built with
   backend='triton' (as experiments/perf/profile_step.py builds it) calls the fused kernels.
3. Timing (bf16, causal, median of triton.testing.do_bench), with peak memory:
   chunked kernel fwd and fwd+bwd (torch vs Triton); fused rounds fwd (all R rounds, as in
   training: with the backward's statistics), bwd (all R rounds), and the whole
   `_RoundsFunction` fwd+bwd, fused vs per-round path.
4. Round-kernel launch shapes (skipped with --quick or when time runs short): each round
   kernel alone over a few shapes that compile without spills for sm_90, checked first;
   the fastest is printed as a `KernelConfigs(...)` for `default_round_configs`.

Counting, chunked kernel (per query row; C = chunk, d = head dim, e = bytes per element):
  FLOPs, useful work only: fwd = 8 C d; bwd = 20 C d (the kernel does 28: P, dP twice).
  Bytes: fwd = 4de + 16; bwd = 8de + 24 (each input read once, each output written once).
  H100 floors (3.0 TB/s, 798 TFLOP/s bf16): base G=32 x L=64K: fwd 0.37 ms, fwd+bwd 1.10 ms.
  Measured before (H100): fwd 0.46 ms, fwd+bwd 2.2 ms.
Counting, fused rounds (per position and head; R rounds; order int64), bytes the design must
move with each row read once per round (k, v and q, dout re-reads by neighbouring programs
hit the L2 or are not counted):
  fwd = R (3de + 8 + 12)        q, k, v, order; lse, row max, log sum written
      + (R - 1)(8d + 8) + de    fp32 accumulator (out, lse) written/read between rounds; out
  bwd = 2de + 8 + 4R            g = <dout, out>, log w = log_softmax_r lse
      + R (4de + 8 + 20)        q, k, v, dout, order; row max, log sum, lse, Z, g
      + (R - 1) 24d + 3de       fp32 dq, dk, dv accumulators between rounds; dq, dk, dv
  base (512K rows, d = 64, e = 2, R = 4): fwd 1.73 GB -> 0.58 ms at 3 TB/s; bwd 3.9 GB ->
  1.3 ms; FLOPs (2 products fwd, 7 bwd, of 2C keys per row) 69 + 240 GFLOP.
  Prediction before the first run: fwd ~0.9 ms, bwd ~2.3 ms (gathered 128-byte rows, k/v
  re-read across windows, 7 products in the backward); the per-round path: fwd ~4 ms,
  fwd+bwd ~15 ms (sorted copies, unsort, merge and the per-round autograd recomputation).
Exit status 1 if any check fails (or a tuning candidate is wrong).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SMOKE = "--smoke" in sys.argv  # a CPU dry run of this script under Triton's interpreter
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton decorates the kernels
DEVICE = "cpu" if SMOKE else "cuda"
try:
    import reformer_lab  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e`
    sys.path.insert(0, str(REPO / "src"))

from reformer_lab import kernels  # noqa: E402
from reformer_lab.kernels import chunked_attention_triton  # noqa: E402
from reformer_lab.kernels import triton_chunked as tc  # noqa: E402
from reformer_lab.kernels import triton_rounds as tr  # noqa: E402
from reformer_lab.kernels.rounds import default_round_configs  # noqa: E402
from reformer_lab.model.attention import lsh_rounds  # noqa: E402
from reformer_lab.model.attention.chunked import chunked_attention_torch, normalize_keys  # noqa: E402
from reformer_lab.model.attention.lsh_rounds import HashRounds, merge_rounds  # noqa: E402

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
FAILURES: list[str] = []
TIME_BUDGET_S = 200  # the optional tuning runs only while the script is under this


def free_memory() -> None:
    if not SMOKE:
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- inputs


def lsh_like_inputs(G, L, d, dtype, *, valid_frac=None, n_buckets=None, device=DEVICE):
    """q, k, v (G, L, d) ~ N(0, 1); pos (G, L): positions sorted by (random bucket, position);
    sorted buckets (G, L); key_valid (G, L) bool or None."""
    n_buckets = n_buckets or max(2, L // 64)
    q, k, v = (torch.randn(G, L, d, device=device).to(dtype) for _ in range(3))
    bucket = torch.randint(0, n_buckets, (G, L), device=device)
    pos = (bucket * L + torch.arange(L, device=device)).argsort(dim=1)  # (G, L) int64
    buckets = bucket.gather(1, pos)
    key_valid = None if valid_frac is None else torch.rand(G, L, device=device) < valid_frac
    return q, k, v, pos, buckets, key_valid


def relative_error(got, ref) -> float:
    if not torch.isfinite(got).all():
        return math.inf
    got, ref = got.double(), ref.double()
    return ((got - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def outputs_and_grads(fn, q, k, v, w, u):
    """[out, lse, dq, dk, dv] for loss sum(out * w) + sum(lse * u)."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = fn(q, k, v)
    torch.autograd.backward([out, lse], [w.to(out.dtype), u.to(lse.dtype)])
    return [out.detach(), lse.detach(), q.grad, k.grad, v.grad]


# --------------------------------------------------------------------------- 1. correctness


CHECKS = [
    # G, L, d, C, causal, dtype, valid_frac, use_buckets
    (8, 4096, 64, 64, True, torch.bfloat16, 0.9, False),
    (4, 65536, 64, 64, True, torch.bfloat16, None, False),
    (16, 4096, 16, 16, True, torch.bfloat16, None, False),
    (2, 65536, 16, 16, True, torch.bfloat16, 0.95, True),
    (4, 4096, 32, 32, True, torch.bfloat16, 0.9, True),
    (4, 2048, 128, 128, False, torch.float16, 0.9, False),
    (2, 4096, 64, 256, True, torch.bfloat16, None, False),
    (4, 2048, 64, 64, True, torch.float32, 0.9, False),
    (2, 2048, 128, 32, False, torch.float32, None, True),
]


def check_case(G, L, d, C, causal, dtype, valid_frac, use_buckets, configs=None) -> dict:
    q, k, v, pos, buckets, key_valid = lsh_like_inputs(G, L, d, dtype, valid_frac=valid_frac)
    kw = dict(
        scale=d**-0.5, causal=causal, key_valid=key_valid, buckets=buckets if use_buckets else None
    )
    # Loss weights rounded to what autograd hands each output (dout in the output's dtype).
    w = torch.randn(G, L, d, device=DEVICE).to(dtype).double()
    u = torch.randn(G, L, device=DEVICE).double()
    ref = outputs_and_grads(
        lambda *t: chunked_attention_torch(*t, pos, C, **kw),
        q.double(),
        k.double(),
        v.double(),
        w,
        u,
    )
    got = outputs_and_grads(
        lambda *t: chunked_attention_triton(*t, pos, C, configs=configs, **kw), q, k, v, w, u
    )
    same_dtype_torch = outputs_and_grads(
        lambda *t: chunked_attention_torch(*t, pos, C, **kw), q, k, v, w, u
    )
    names = ("out", "lse", "dq", "dk", "dv")
    errors = {n: relative_error(a, b) for n, a, b in zip(names, got, ref)}
    torch_errors = {n: relative_error(a, b) for n, a, b in zip(names, same_dtype_torch, ref)}
    ok = all(e < TOLERANCE[dtype] for e in errors.values())
    del ref, got, same_dtype_torch
    free_memory()
    return dict(ok=ok, errors=errors, torch_errors=torch_errors)


def poison_check(G, L, d, C, dtype, configs) -> bool:
    """NaN-filled output buffers: every element must be overwritten."""
    q, k, v, pos, buckets, key_valid = lsh_like_inputs(G, L, d, dtype, valid_frac=0.9)
    nan = lambda *shape, dt=torch.float32: torch.full(shape, math.nan, device=DEVICE, dtype=dt)  # noqa: E731
    opts = dict(chunk_size=C, scale=d**-0.5, causal=True, interpret=SMOKE)
    pos, buckets, key_valid = pos.int(), buckets.int(), key_valid.view(torch.uint8)
    out, lse, stats = tc.launch_forward(
        q, k, v, pos, key_valid, buckets, config=configs.fwd, stats=True,
        out=nan(G, L, d, dt=dtype), lse=nan(G, L), row_stats=(nan(G, L), nan(G, L)), **opts,
    )  # fmt: skip
    grads = tc.launch_backward(
        q, k, v, pos, key_valid, buckets, out, stats, torch.randn_like(out), torch.randn_like(lse),
        configs=configs, grads=tuple(nan(G, L, d, dt=dtype) for _ in range(3)), **opts,
    )  # fmt: skip
    return all(torch.isfinite(t).all().item() for t in (out, lse, *stats, *grads))


def run_checks() -> list[str]:
    rows = []
    for case in CHECKS:
        G, L, d, C, causal, dtype, valid_frac, use_buckets = case
        r = check_case(*case)
        configs = tc.default_configs(C, d, dtype)
        poison_len = C * (5 if SMOKE else 2 * (2048 // C) + 1)  # odd chunk count: tiles overhang
        poisoned_ok = poison_check(2, poison_len, d, C, dtype, configs)
        ok = r["ok"] and poisoned_ok
        label = f"G={G} L={L} d={d} C={C} {'causal' if causal else 'full'} {DTYPE_NAMES[dtype]}"
        label += f"{' valid' if valid_frac else ''}{' buckets' if use_buckets else ''}"
        if not ok:
            FAILURES.append(f"check {label}: {r['errors']} poison_ok={poisoned_ok}")
        errs = " ".join(f"{n}={e:.1e}" for n, e in r["errors"].items())
        worst = max(r["torch_errors"], key=r["torch_errors"].get)
        torch_worst = f"torch {DTYPE_NAMES[dtype]}: worst {worst}={r['torch_errors'][worst]:.1e}"
        rows.append(f"{'ok ' if ok else 'BAD'} {label:48s} {errs}  ({torch_worst})")
        print(rows[-1], flush=True)
    return rows


# --------------------------------------------------------------------------- timing helpers


def bench(fn, grad_to_none=None) -> float:
    import triton.testing

    if SMOKE:  # no CUDA events on the CPU: one timed call
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return triton.testing.do_bench(
        fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median"
    )


def flops_and_bytes(G, L, d, C, e, part) -> tuple[float, float]:
    """Useful FLOPs and minimal bytes of one call (module docstring)."""
    rows = G * L
    fwd_f, bwd_f = 8 * C * d, 20 * C * d
    fwd_b, bwd_b = 4 * d * e + 16, 8 * d * e + 24
    f = {"fwd": fwd_f, "bwd": bwd_f, "fwd+bwd": fwd_f + bwd_f}[part]
    b = {"fwd": fwd_b, "bwd": bwd_b, "fwd+bwd": fwd_b + bwd_b}[part]
    return rows * f, rows * b


def rate(ms, G, L, d, C, e, part) -> str:
    f, b = flops_and_bytes(G, L, d, C, e, part)
    return f"{f / ms / 1e9:6.1f} TFLOP/s {b / ms / 1e6:7.0f} GB/s"


# --------------------------------------------------------------------------- 3. chunked kernel timing

SHAPES = {  # G = batch 1 x heads x 4 hash rounds; L large enough that inputs dwarf the L2
    "base": dict(G=32, L=65536, d=64, C=64),
    "tiny": dict(G=16, L=262144, d=16, C=16),
}


def time_step(name: str, configs_by_label: dict) -> list[str]:
    shape = SHAPES[name]
    G, L, d, C = shape["G"], shape["L"], shape["d"], shape["C"]
    dtype, e = torch.bfloat16, 2
    q, k, v, pos, _, _ = lsh_like_inputs(G, L, d, dtype)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    dout = torch.randn_like(q)
    dlse = torch.randn(G, L, device=DEVICE)
    kw = dict(scale=d**-0.5, causal=True)
    impls = {"torch": lambda: chunked_attention_torch(*leaves, pos, C, **kw)}
    for label, configs in configs_by_label.items():
        impls[label] = lambda configs=configs: chunked_attention_triton(
            *leaves, pos, C, configs=configs, **kw
        )
    rows = []
    for label, fn in impls.items():

        def step(fn=fn):
            out, lse = fn()
            torch.autograd.backward([out, lse], [dout, dlse])

        try:
            fwd_ms = bench(fn)
            peak_gb = math.nan
            if not SMOKE:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base_mem = torch.cuda.memory_allocated()
                step()
                torch.cuda.synchronize()
                peak_gb = (torch.cuda.max_memory_allocated() - base_mem) / 1e9
            step_ms = bench(step, grad_to_none=leaves)
        except torch.cuda.OutOfMemoryError:
            rows.append(f"{name:4s} {label:14s} out of memory")
            continue
        for t in leaves:
            t.grad = None
        rows.append(
            f"{name:4s} {label:14s} fwd {fwd_ms:7.3f} ms ({rate(fwd_ms, G, L, d, C, e, 'fwd')})  "
            f"fwd+bwd {step_ms:7.3f} ms ({rate(step_ms, G, L, d, C, e, 'fwd+bwd')})  peak +{peak_gb:.2f} GB"
        )
        print(rows[-1], flush=True)
    free_memory()
    return rows


# --------------------------------------------------------------------------- 2, 3. fused rounds

ROUND_SHAPES = {  # the model's shapes at 64K tokens, batch 1 (per layer call)
    "base": dict(B=1, H=8, L=65536, d=64, C=64, R=4),
    "tiny": dict(B=1, H=4, L=65536, d=16, C=16, R=4),
}
ROUND_CHECKS = [
    # shape, causal, dtype, valid_frac, use_buckets
    ("base", True, torch.bfloat16, None, False),
    ("tiny", True, torch.bfloat16, 0.95, True),
    (dict(B=2, H=4, L=4096, d=32, C=32, R=2), False, torch.float16, 0.9, False),
    (dict(B=1, H=2, L=4096, d=64, C=64, R=3), True, torch.float32, 0.9, True),
    (dict(B=1, H=2, L=2048, d=128, C=128, R=1), True, torch.bfloat16, None, False),
]


def shape_of(shape) -> dict:
    return ROUND_SHAPES[shape] if isinstance(shape, str) else shape


def round_inputs(B, H, L, d, C, R, dtype, *, causal, valid_frac, use_buckets):
    """q, k, v (B, H, L, d) as views of one (B, L, H, 3d) projection output, and hash rounds as
    lsh.py builds them: random buckets (2L/C of them), invalid keys in a bucket of their own,
    order = positions sorted by (bucket, position)."""
    x = torch.randn(B, L, H, 3 * d, device=DEVICE).to(dtype)
    q, k, v = (x[..., i * d : (i + 1) * d].transpose(1, 2) for i in range(3))
    n_buckets = max(2, 2 * L // C)
    buckets = torch.randint(0, n_buckets, (B, H, R, L), device=DEVICE)
    key_valid = None
    if valid_frac is not None:
        key_valid = torch.rand(B, L, device=DEVICE) < valid_frac
        buckets = buckets.masked_fill(~key_valid[:, None, None, :], n_buckets)
    order = torch.sort(buckets.to(torch.int32), dim=-1, stable=True).indices  # (B, H, R, L)
    rounds = HashRounds(
        order=order,
        key_valid=key_valid,
        buckets=buckets if use_buckets else None,
        chunk_size=C,
        causal=causal,
        dedup=False,
        backend="torch",
    )
    return q, k, v, rounds


def fused_options(rounds: HashRounds, d: int) -> dict:
    return dict(
        chunk_size=rounds.chunk_size,
        scale=d**-0.5,
        causal=rounds.causal,
        key_valid=rounds.key_valid,
        buckets=rounds.buckets,
    )


def fused_rounds(q, k, v, rounds, dout, configs=None) -> list:
    """[out, lse, dq, dk, dv] from the fused round kernels (k = None: shared-QK keys; dk None)."""
    opts = fused_options(rounds, q.shape[-1])
    out, lse, stats = kernels.lsh_rounds_forward(
        q, k, v, rounds.order, stats=True, configs=configs, **opts
    )
    grads = kernels.lsh_rounds_backward(
        q, k, v, rounds.order, out=out, lse=lse, stats=stats, dout=dout, configs=configs, **opts
    )
    return [out, lse, *grads]


def per_round_path(q, k, v, rounds, dout, backend) -> list:
    """[out, lse, dq, dk, dv] from `_RoundsFunction` without the fused kernels."""
    saved = lsh_rounds.USE_FUSED_ROUNDS, rounds.backend
    lsh_rounds.USE_FUSED_ROUNDS, rounds.backend = False, backend
    try:
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = lsh_rounds.attend_all_rounds(*leaves, rounds)
        out.backward(dout.to(out.dtype))
        with torch.no_grad():
            lse = merge_rounds(q, k, v, rounds)[1]
    finally:
        lsh_rounds.USE_FUSED_ROUNDS, rounds.backend = saved
    return [out.detach(), lse, *(t.grad for t in leaves)]


def torch_oracle(q, k, v, rounds, dout) -> list:
    """[out, lse, dq, dk, dv] of the torch rounds path in fp32 (backend 'torch', plain autograd
    through `merge_rounds`). fp32, not fp64: in rows whose every key is masked (padding
    queries), an fp32 lse ~ -1e9 has lost log(2C) in the model's path and in the kernels
    alike, while fp64 keeps it; those rows would differ by design, not by error."""
    saved = rounds.backend
    rounds.backend = "torch"
    try:
        leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
        out, lse = merge_rounds(*leaves, rounds)
        out.backward(dout.float())
    finally:
        rounds.backend = saved
    return [out.detach(), lse, *(t.grad for t in leaves)]


def check_rounds_case(shape, causal, dtype, valid_frac, use_buckets, configs=None, scale_col=True):
    s = shape_of(shape)
    q, k, v, rounds = round_inputs(
        **s, dtype=dtype, causal=causal, valid_frac=valid_frac, use_buckets=use_buckets
    )
    dout = torch.randn(s["B"], s["H"], s["L"], s["d"], device=DEVICE).to(dtype)
    ref = torch_oracle(q, k, v, rounds, dout)
    got = fused_rounds(q, k, v, rounds, dout, configs)
    names = ("out", "lse", "dq", "dk", "dv")
    errors = {n: relative_error(a, b) for n, a, b in zip(names, got, ref)}
    del got
    old_errors = {}
    if scale_col:
        old = per_round_path(q, k, v, rounds, dout, "auto")
        old_errors = {n: relative_error(a, b) for n, a, b in zip(names, old, ref)}
        del old
    del ref
    free_memory()
    ok = all(e < TOLERANCE[dtype] for e in errors.values())
    return dict(ok=ok, errors=errors, old_errors=old_errors)


def check_shared_qk_case(shape, dtype) -> dict:
    """k = None (keys normalised from q inside the kernels, dk folded into dq) against the fp32
    torch path with normalize_keys(q): out, lse, dq, dv."""
    s = shape_of(shape)
    q, _, v, rounds = round_inputs(
        **s, dtype=dtype, causal=True, valid_frac=None, use_buckets=False
    )
    dout = torch.randn(s["B"], s["H"], s["L"], s["d"], device=DEVICE).to(dtype)
    leaves = [t.detach().float().requires_grad_() for t in (q, v)]
    ref_out, ref_lse = merge_rounds(leaves[0], normalize_keys(leaves[0]), leaves[1], rounds)
    ref_out.backward(dout.float())
    got = fused_rounds(q, None, v, rounds, dout)  # [out, lse, dq, None, dv]
    ref = [ref_out.detach(), ref_lse, leaves[0].grad, None, leaves[1].grad]
    names = ("out", "lse", "dq", "dk", "dv")
    errors = {n: relative_error(a, b) for n, a, b in zip(names, got, ref) if b is not None}
    del got, ref, leaves
    free_memory()
    return dict(ok=all(e < TOLERANCE[dtype] for e in errors.values()), errors=errors)


def run_round_checks() -> list[str]:
    rows = []
    for shape in ("base", "tiny"):
        r = check_shared_qk_case(shape, torch.bfloat16)
        label = "{} shared-QK B={B} H={H} L={L} d={d} C={C} R={R} causal bf16".format(
            shape, **shape_of(shape)
        )
        if not r["ok"]:
            FAILURES.append(f"rounds {label}: {r['errors']}")
        errs = " ".join(f"{n}={e:.1e}" for n, e in r["errors"].items())
        rows.append(f"{'ok ' if r['ok'] else 'BAD'} {label:58s} {errs}")
        print(rows[-1], flush=True)
    for case in ROUND_CHECKS:
        shape, causal, dtype, valid_frac, use_buckets = case
        s = shape_of(shape)
        r = check_rounds_case(*case)
        label = "{}B={B} H={H} L={L} d={d} C={C} R={R}".format(
            f"{shape} " if isinstance(shape, str) else "", **s
        )
        label += f" {'causal' if causal else 'full'} {DTYPE_NAMES[dtype]}"
        label += f"{' valid' if valid_frac else ''}{' buckets' if use_buckets else ''}"
        if not r["ok"]:
            FAILURES.append(f"rounds {label}: {r['errors']}")
        errs = " ".join(f"{n}={e:.1e}" for n, e in r["errors"].items())
        worst = max(r["old_errors"], key=r["old_errors"].get)
        old = f"per-round: worst {worst}={r['old_errors'][worst]:.1e}"
        rows.append(f"{'ok ' if r['ok'] else 'BAD'} {label:58s} {errs}  ({old})")
        print(rows[-1], flush=True)
    return rows


def fused_path_in_model() -> str:
    """A bf16 ReformerLM with backend='triton' (profile_step.py's build) must call the fused
    round kernels in its forward and backward."""
    from reformer_lab.model import ReformerConfig, ReformerLM

    calls = {"lsh_rounds_forward": 0, "lsh_rounds_backward": 0}
    originals = {name: getattr(kernels, name) for name in calls}

    def counting(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)

        return call

    seq = 128 if SMOKE else 4096
    size = dict(dim=32, heads=2) if SMOKE else dict(dim=256, heads=4)
    cfg = ReformerConfig(
        vocab_size=256, depth=2, max_seq_len=seq, axial_shape=(8, seq // 8),
        bucket_size=16 if SMOKE else 64, n_hashes=2, backend="auto" if SMOKE else "triton",
        **size,
    )  # fmt: skip
    model = ReformerLM(cfg).to(DEVICE)
    tokens = torch.randint(0, 256, (1, seq + 1), device=DEVICE)
    try:
        for name in calls:
            setattr(kernels, name, counting(name))
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=not SMOKE):
            loss = model.loss(tokens[:, :-1], tokens[:, 1:]).loss
        loss.backward()
    finally:
        for name, fn in originals.items():
            setattr(kernels, name, fn)
    ok = calls["lsh_rounds_forward"] > 0 and calls["lsh_rounds_backward"] > 0
    row = f"{'ok ' if ok else 'BAD'} ReformerLM(backend='triton', bf16) calls the fused kernels: {calls}"
    if not ok:
        FAILURES.append(row)
    print(row, flush=True)
    return row


def rounds_bytes(B, H, L, d, R, e, part) -> float:
    """Bytes the fused design moves (module docstring)."""
    rows = B * H * L
    fwd = R * (3 * d * e + 20) + (R - 1) * (8 * d + 8) + d * e
    bwd = 2 * d * e + 8 + 4 * R + R * (4 * d * e + 28) + (R - 1) * 24 * d + 3 * d * e
    return rows * {"fwd": fwd, "bwd": bwd}[part]


def time_rounds(name: str) -> list[str]:
    s = ROUND_SHAPES[name]
    B, H, L, d, R = (s[n] for n in ("B", "H", "L", "d", "R"))
    dtype, e = torch.bfloat16, 2
    q, k, v, rounds = round_inputs(
        **s, dtype=dtype, causal=True, valid_frac=None, use_buckets=False
    )
    dout = torch.randn(B, H, L, d, device=DEVICE).to(dtype)
    opts = fused_options(rounds, d)
    order = rounds.order

    def forward():
        return kernels.lsh_rounds_forward(q, k, v, order, stats=True, **opts)

    saved = forward()  # out, lse, stats

    def backward():
        out, lse, stats = saved
        return kernels.lsh_rounds_backward(
            q, k, v, order, out=out, lse=lse, stats=stats, dout=dout, **opts
        )

    fwd_ms, bwd_ms = bench(forward), bench(backward)
    saved = None  # frees the forward's outputs
    gbs = lambda part, ms: rounds_bytes(B, H, L, d, R, e, part) / ms / 1e6  # noqa: E731
    rows = [
        f"{name:4s} fused rounds   fwd {fwd_ms:7.3f} ms ({gbs('fwd', fwd_ms):5.0f} GB/s)  "
        f"bwd {bwd_ms:7.3f} ms ({gbs('bwd', bwd_ms):5.0f} GB/s)  (R={R} rounds, H={H}, L={L})"
    ]
    print(rows[-1], flush=True)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    rounds.backend = "auto"

    def step_forward():
        return lsh_rounds.attend_all_rounds(*leaves, rounds)

    def step():
        step_forward().backward(dout)

    for label, fused in (("fused", True), ("per-round", False)):
        lsh_rounds.USE_FUSED_ROUNDS = fused
        try:
            peak_gb = math.nan
            if not SMOKE:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base_mem = torch.cuda.memory_allocated()
                step()
                torch.cuda.synchronize()
                peak_gb = (torch.cuda.max_memory_allocated() - base_mem) / 1e9
            f_ms, s_ms = bench(step_forward), bench(step, grad_to_none=leaves)
            rows.append(
                f"{name:4s} {label:9s} _RoundsFunction fwd {f_ms:7.3f} ms  fwd+bwd {s_ms:7.3f} ms"
                f"  peak +{peak_gb:.2f} GB"
            )
        except torch.cuda.OutOfMemoryError:
            rows.append(f"{name:4s} {label:9s} _RoundsFunction out of memory")
        finally:
            lsh_rounds.USE_FUSED_ROUNDS = True
        print(rows[-1], flush=True)
    free_memory()
    return rows


# --------------------------------------------------------------------------- 4. launch shapes

ROUND_CANDIDATES = {  # (tile, step, num_warps, num_stages); all compile without spills for sm_90
    "base": {
        "fwd": [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 2), (64, 64, 4, 3)],
        "dkdv": [(64, 32, 4, 2), (64, 64, 8, 2), (64, 32, 8, 2), (32, 64, 4, 2)],
        "dq": [(64, 32, 4, 2), (64, 64, 4, 2), (64, 32, 8, 2), (128, 32, 8, 2)],
    },
    "tiny": {
        "fwd": [(32, 16, 2, 2), (64, 16, 4, 2), (64, 32, 4, 2)],
        "dkdv": [(32, 32, 2, 2), (64, 16, 4, 2), (64, 32, 4, 2)],
        "dq": [(32, 16, 2, 2), (64, 16, 4, 2), (64, 32, 4, 2)],
    },
}


def tune_rounds(name: str) -> tc.KernelConfigs:
    """Each round kernel alone, round 1 of R (reads and writes the accumulators)."""
    s = ROUND_SHAPES[name]
    B, H, L, d, C = (s[n] for n in ("B", "H", "L", "d", "C"))
    dtype = torch.bfloat16
    default = default_round_configs(C, d, dtype)
    q, k, v, rounds = round_inputs(
        **s, dtype=dtype, causal=True, valid_frac=None, use_buckets=False
    )
    order = rounds.order
    opts = dict(chunk_size=C, scale=d**-0.5, causal=True, interpret=SMOKE)
    f32 = dict(device=DEVICE, dtype=torch.float32)
    out, lse, stats = kernels.lsh_rounds_forward(
        q, k, v, order, stats=True, **fused_options(rounds, d)
    )
    acc = (torch.zeros(B, H, L, d, **f32), torch.zeros(2, B, H, L, **f32))  # max, mass
    dout = torch.randn_like(out)
    back = dict(
        stats=stats, lse=lse, lse_total=torch.log_softmax(lse, dim=2),
        grad_dot=tr.launch_row_dot(dout, out), dout=dout,
        accumulators=tuple(torch.zeros(B, H, L, d, **f32) for _ in range(3)), grads=None,
    )  # fmt: skip
    small = dict(B=1, H=2, L=4 * C if SMOKE else 4096, d=d, C=C, R=2)
    best = {}
    for kernel, candidates in ROUND_CANDIDATES[name].items():
        timings = []
        for t, st, w, stg in candidates:
            cfg = tc.TileConfig(tile=t, step=st, num_warps=w, num_stages=stg)
            configs = tc.KernelConfigs(**{**default.__dict__, kernel: cfg})
            try:
                checked = check_rounds_case(
                    small, True, dtype, 0.9, False, configs=configs, scale_col=False
                )
            except Exception as exc:  # a launch shape that does not compile here
                print(
                    f"  {name} {kernel:4s} {cfg}: FAILED TO RUN {type(exc).__name__}: {str(exc)[:120]}"
                )
                continue
            if not checked["ok"]:
                FAILURES.append(f"round tuning {name} {kernel} {cfg}: {checked['errors']}")
                print(f"  {name} {kernel:4s} {cfg}: WRONG {checked['errors']}")
                continue
            if kernel == "fwd":
                fn = lambda cfg=cfg: tr.launch_round_forward(  # noqa: E731
                    q, k, v, order, None, None, 1, out_acc=acc[0], lse_acc=acc[1], lse=lse,
                    stats=stats, out=None, config=cfg, **opts,
                )  # fmt: skip
            else:
                fn = lambda configs=configs, kernel=kernel: tr.launch_round_backward(  # noqa: E731
                    q, k, v, order, None, None, 1, configs=configs, parts=(kernel,), **back,
                    **opts,
                )  # fmt: skip
            ms = bench(fn)
            timings.append((ms, cfg))
            print(f"  {name} round {kernel:4s} tile={t:3d} step={st:3d} warps={w} stages={stg}: "
                  f"{ms:7.3f} ms per round", flush=True)  # fmt: skip
        if timings:
            best[kernel] = min(timings, key=lambda x: x[0])[1]
    free_memory()
    return tc.KernelConfigs(**{**default.__dict__, **best})


def shrink_for_smoke() -> None:
    """Interpreter-sized stand-ins: same code paths, seconds instead of minutes."""
    CHECKS[:] = [
        (2, 128, 64, 64, True, torch.bfloat16, 0.9, False),
        (2, 64, 16, 16, True, torch.float32, None, True),
    ]
    SHAPES.update(base=dict(G=1, L=256, d=64, C=64), tiny=dict(G=1, L=128, d=16, C=16))
    ROUND_SHAPES.update(
        base=dict(B=1, H=2, L=256, d=64, C=64, R=2), tiny=dict(B=1, H=2, L=64, d=16, C=16, R=2)
    )
    ROUND_CHECKS[:] = [
        ("base", True, torch.bfloat16, None, False),
        ("tiny", True, torch.bfloat16, 0.9, True),
        (dict(B=1, H=1, L=64, d=32, C=32, R=1), False, torch.float32, 0.9, False),
    ]
    for kernels_ in ROUND_CANDIDATES.values():
        for name in kernels_:
            kernels_[name] = kernels_[name][:2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="correctness checks only")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for kernel_check.json")
    parser.add_argument("--smoke", action="store_true", help="CPU dry run under the interpreter")
    parser.add_argument(
        "--tune-only", action="store_true", help="section 4 alone (each candidate still checked)"
    )
    args = parser.parse_args()
    if not SMOKE and not torch.cuda.is_available():
        print("kernel_check.py needs a CUDA GPU (or --smoke for a CPU dry run)", file=sys.stderr)
        return 2
    import triton

    if SMOKE:
        shrink_for_smoke()
        lsh_rounds.FUSED_ON_CPU_UNDER_INTERPRETER = True  # the fused path on CPU tensors
    torch.manual_seed(int(time.time()))  # fresh inputs every run
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references in full fp32
    device_name = "CPU, Triton interpreter" if SMOKE else torch.cuda.get_device_name()
    header = f"{device_name} | torch {torch.__version__} | triton {triton.__version__}"
    print(header, flush=True)
    t0 = time.time()
    sections: dict[str, list[str]] = {}

    def section(title: str, run) -> None:
        print(f"== {title}", flush=True)
        try:
            sections[title] = run()
        except Exception as exc:  # report, and go on with the other sections
            row = f"BAD {title}: {type(exc).__name__}: {str(exc)[:300]}"
            FAILURES.append(row)
            sections[title] = [row]
            print(row, flush=True)

    if not args.tune_only:
        section("1. chunked kernel vs float64 torch reference (relative L2 error)", run_checks)
        section("2. fused LSH rounds vs float32 torch rounds path", run_round_checks)
        section("2b. the model's fused path", lambda: [fused_path_in_model()])
    if not args.quick:

        def timing():
            rows = []
            for name in SHAPES:
                shape = SHAPES[name]
                default = tc.default_configs(shape["C"], shape["d"], torch.bfloat16)
                rows += time_step(name, {"triton": default})
            for name in ROUND_SHAPES:
                rows += time_rounds(name)
            return rows

        if not args.tune_only:
            section("3. timing (bf16, causal, median of do_bench)", timing)

        def tuning():
            rows = []
            for name in ROUND_SHAPES:
                if time.time() - t0 > TIME_BUDGET_S:
                    rows.append(f"round launch shapes {name}: skipped (time budget)")
                    continue
                s = ROUND_SHAPES[name]
                rows.append(
                    f"best round configs {name} (C={s['C']}, d={s['d']}): {tune_rounds(name)}"
                )
            return rows

        section("4. round-kernel launch shapes (bf16, causal)", tuning)
    summary = [header]
    for rows in sections.values():
        summary += rows
    summary.append(f"{len(FAILURES)} failure(s); {time.time() - t0:.0f} s")
    for failure in FAILURES:
        print("FAIL:", failure)
    print("\n== summary\n" + "\n".join(summary))
    if args.out:
        path = Path(args.out) / "kernel_check.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(summary=summary, failures=FAILURES), indent=1))
        tmp.replace(path)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
