"""GPU check, tuning and timing of the fused chunked-attention kernel (reformer_lab.kernels).

    python3 experiments/benchmarks/kernel_check.py            # ~3 min on an H100
    python3 experiments/benchmarks/kernel_check.py --quick    # checks only, no tuning
    python experiments/benchmarks/kernel_check.py --smoke     # CPU dry run, tiny sizes (tests the script)

1. Correctness: fresh random LSH-like inputs (pos = each group's positions sorted by random
   buckets), kernel vs `chunked_attention_torch` in float64 on the very inputs the kernel got;
   out, lse and the gradients of sum(out * w) + sum(lse * u) (so d lse flows). Relative error
   ||got - ref|| / ||ref|| must stay under 1e-2 (bf16, fp16) or 1e-4 (fp32, tf32x3 products).
   For scale, the column `torch` gives the same error for the torch reference run in the
   input dtype. Outputs are poisoned with NaN first to catch unwritten elements.
2. Tuning (skipped with --quick): for the base (C=64, d=64) and tiny (C=16, d=16) shapes, each
   kernel alone over a few launch shapes that compile without register spills for sm_90;
   every candidate is checked against the reference first; the fastest is printed as a
   `KernelConfigs(...)` to paste into `default_configs`.
3. Timing: fwd and fwd+bwd, torch (bf16) vs Triton (defaults and tuned), median of
   triton.testing.do_bench, with peak memory.

Counting (per query row; C = chunk, d = head dim, e = bytes per element):
  FLOPs, useful work only: each query meets 2C keys; a (1 x d)(d x 2C) product is 2*2C*d.
  fwd = 2 products (QK^T, PV) = 8 C d; bwd = 5 (QK^T again, dP = dO V^T, dV, dK, dQ) = 20 C d;
  fwd+bwd = 28 C d. (The kernel's backward does 7 products: P and dP are formed in both the
  dk/dv and the dq kernel; the extra 8 C d is not counted.)
  Bytes, each input read once and each output written once: fwd = q, k, v, out (4 d e) +
  pos 4 + lse 4 + row max and log-sum 8 = 4de + 16; bwd = q, k, v, out, dout, dq, dk, dv
  (8 d e) + pos 4 + row stats 8 + dlse 4 + delta write+read 8 = 8de + 24.
Floors on an H100 (3.0 TB/s copy, 798 TFLOP/s bf16, both measured here; bf16, causal):
  base, G=32 x L=64K rows (2.1M), d=C=64: fwd 1.11 GB -> 0.37 ms (69 GFLOP -> 0.09 ms);
    fwd+bwd 3.31 GB -> 1.10 ms (240 GFLOP -> 0.30 ms). Memory-bound.
    Prediction before the first run: fwd ~0.6 ms, fwd+bwd ~2.2 ms (k, v re-read by two
    programs, q, dO re-read by the two backward kernels, 7 products, short programs);
    torch: several passes over 1 GB fp32 score tensors, fwd ~4 ms, fwd+bwd ~15 ms.
  tiny, G=16 x L=256K rows (4.2M), d=C=16: fwd 0.60 GB -> 0.20 ms; fwd+bwd 1.78 GB -> 0.59 ms
    (FLOPs negligible). Prediction: fwd ~0.4 ms, fwd+bwd ~1.3 ms (index and mask arithmetic
    weighs more at d = 16; tiles span chunks, so 2.5x the useful products).
Exit status 1 if any check fails (or a tuned candidate is wrong).
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

from reformer_lab.kernels import chunked_attention_triton  # noqa: E402
from reformer_lab.kernels import triton_chunked as tc  # noqa: E402
from reformer_lab.model.attention.chunked import chunked_attention_torch  # noqa: E402

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
FAILURES: list[str] = []


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
    if not SMOKE:
        torch.cuda.empty_cache()
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


# --------------------------------------------------------------------------- 2. tuning

CANDIDATES = {  # (tile, step, num_warps, num_stages); all compile without spills for sm_90
    "base": {
        "fwd": [
            (64, 64, 4, 2),
            (64, 32, 4, 2),
            (64, 64, 4, 3),
            (128, 64, 8, 2),
            (128, 32, 8, 2),
            (32, 64, 4, 2),
        ],
        "dkdv": [
            (64, 32, 4, 2),
            (64, 64, 4, 2),
            (64, 64, 8, 2),
            (64, 32, 8, 3),
            (128, 32, 8, 2),
            (32, 64, 4, 2),
        ],
        "dq": [
            (64, 64, 4, 2),
            (64, 32, 4, 2),
            (64, 64, 8, 2),
            (128, 32, 8, 2),
            (128, 64, 8, 2),
            (32, 64, 4, 2),
        ],
    },
    "tiny": {
        "fwd": [
            (64, 16, 4, 2),
            (64, 32, 4, 2),
            (128, 16, 4, 2),
            (128, 32, 4, 2),
            (32, 16, 2, 2),
            (64, 64, 4, 2),
        ],
        "dkdv": [(64, 16, 4, 2), (64, 32, 4, 2), (128, 16, 4, 2), (32, 32, 2, 2), (32, 16, 4, 2)],
        "dq": [(64, 16, 4, 2), (64, 32, 4, 2), (128, 16, 4, 2), (128, 32, 4, 2), (32, 16, 2, 2)],
    },
}
SHAPES = {  # G = batch 1 x heads x 4 hash rounds; L large enough that inputs dwarf the L2
    "base": dict(G=32, L=65536, d=64, C=64),
    "tiny": dict(G=16, L=262144, d=16, C=16),
}


def tune(name: str) -> tc.KernelConfigs:
    shape = SHAPES[name]
    G, L, d, C = shape["G"], shape["L"], shape["d"], shape["C"]
    dtype = torch.bfloat16
    default = tc.default_configs(C, d, dtype)
    q, k, v, pos, _, _ = lsh_like_inputs(G, L, d, dtype)
    pos = pos.int()
    opts = dict(chunk_size=C, scale=d**-0.5, causal=True, interpret=SMOKE)
    out, lse, stats = tc.launch_forward(
        q, k, v, pos, None, None, config=default.fwd, stats=True, **opts
    )
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    delta = tc.launch_delta(out, dout)
    best = {}
    for kernel, candidates in CANDIDATES[name].items():
        timings = []
        for t, s, w, st in candidates:
            cfg = tc.TileConfig(tile=t, step=s, num_warps=w, num_stages=st)
            configs = tc.KernelConfigs(**{**default.__dict__, kernel: cfg})
            try:
                checked = check_case(
                    2, 4 * C if SMOKE else 4096, d, C, True, dtype, 0.9, False, configs=configs
                )
            except Exception as exc:  # a launch shape that does not compile here
                print(
                    f"  {name} {kernel:4s} {cfg}: FAILED TO RUN {type(exc).__name__}: {str(exc)[:120]}"
                )
                continue
            if not checked["ok"]:
                FAILURES.append(f"tuning {name} {kernel} {cfg}: {checked['errors']}")
                print(f"  {name} {kernel:4s} {cfg}: WRONG {checked['errors']}")
                continue
            if kernel == "fwd":
                ms = bench(
                    lambda cfg=cfg: tc.launch_forward(
                        q, k, v, pos, None, None, config=cfg, stats=True, **opts
                    )
                )
            else:
                ms = bench(
                    lambda configs=configs, kernel=kernel: tc.launch_backward(
                        q, k, v, pos, None, None, out, stats, dout, dlse, configs=configs, delta=delta,
                        parts=(kernel,), **opts,
                    )
                )  # fmt: skip
            timings.append((ms, cfg))
            print(
                f"  {name} {kernel:4s} tile={t:3d} step={s:3d} warps={w} stages={st}: {ms:7.3f} ms",
                flush=True,
            )
        if timings:
            best[kernel] = min(timings, key=lambda x: x[0])[1]
    if not SMOKE:
        torch.cuda.empty_cache()
    return tc.KernelConfigs(**{**default.__dict__, **best})


# --------------------------------------------------------------------------- 3. timing


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
    if not SMOKE:
        torch.cuda.empty_cache()
    return rows


def shrink_for_smoke() -> None:
    """Interpreter-sized stand-ins: same code paths, seconds instead of minutes."""
    CHECKS[:] = [
        (2, 128, 64, 64, True, torch.bfloat16, 0.9, False),
        (2, 64, 16, 16, True, torch.float32, None, True),
    ]
    SHAPES.update(base=dict(G=1, L=256, d=64, C=64), tiny=dict(G=1, L=128, d=16, C=16))
    for kernels in CANDIDATES.values():
        for name in kernels:
            kernels[name] = kernels[name][:2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="correctness checks only")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for kernel_check.json")
    parser.add_argument("--smoke", action="store_true", help="CPU dry run under the interpreter")
    args = parser.parse_args()
    if not SMOKE and not torch.cuda.is_available():
        print("kernel_check.py needs a CUDA GPU (or --smoke for a CPU dry run)", file=sys.stderr)
        return 2
    import triton

    if SMOKE:
        shrink_for_smoke()
    torch.manual_seed(int(time.time()))  # fresh inputs every run
    device_name = "CPU, Triton interpreter" if SMOKE else torch.cuda.get_device_name()
    header = f"{device_name} | torch {torch.__version__} | triton {triton.__version__}"
    print(header, flush=True)
    t0 = time.time()
    print("== 1. correctness vs float64 torch reference (relative L2 error)", flush=True)
    check_rows = run_checks()
    tuned, timing_rows = {}, []
    if not args.quick:
        print("== 2. tuning (bf16, causal; per kernel, others at defaults)", flush=True)
        for name in SHAPES:
            tuned[name] = tune(name)
        print("== 3. timing (bf16, causal, median of do_bench)", flush=True)
        for name in SHAPES:
            shape = SHAPES[name]
            default = tc.default_configs(shape["C"], shape["d"], torch.bfloat16)
            timing_rows += time_step(name, {"triton": default, "triton-tuned": tuned[name]})
    summary = [header, *check_rows]
    for name, configs in tuned.items():
        shape = SHAPES[name]
        summary.append(f"best {name} (C={shape['C']}, d={shape['d']}): {configs}")
    summary += timing_rows
    summary.append(f"{len(FAILURES)} failure(s); {time.time() - t0:.0f} s")
    print("\n== summary\n" + "\n".join(summary))
    for failure in FAILURES:
        print("FAIL:", failure)
    if args.out:
        path = Path(args.out) / "kernel_check.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(summary=summary, failures=FAILURES), indent=1))
        tmp.replace(path)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
