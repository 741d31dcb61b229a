"""Time the residual-stream updates and the LayerNorm backward's launch shapes (GPU).

    PYTHONPATH=src python experiments/perf/stream_update_sweep.py [--ln-sweep]

1. A branch's update of the fp32 stream, y += x W^T + b, at the chunk shapes of base (FF
   chunk: 16K x 2048 -> 512; attention projection chunk: 32K x 512 -> 512) and tiny
   (16K x 256 -> 64): the matmul with its bias then torch's mixed-dtype `y.add_` (what the
   model ran), the matmul alone, the add alone, the matmul without bias then
   `triton_stream_add.stream_add`, and `torch.addmm(..., out_dtype=float32)` into y (no bias).
   Each checked against the fp32 sum first.
2. The LayerNorm backward (`triton_layer_norm._ln_bwd_kernel`, adding into a buffer) at
   (16K, 512) and (256K, 512) one part, (16K, 2 x 512) two parts, at its default launch shape
   (with --ln-sweep, over launch shapes too: rows a block, blocks a program, warps); the floor is its bytes at 3.35 TB/s (H200 spec 4.8: what
   a copy reaches is printed first).

Ten calls captured in a CUDA graph, CUDA events around its replays, median of 20.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_gelu_sweep import median_us

from reformer_lab.kernels import triton_layer_norm as tln
from reformer_lab.kernels.triton_stream_add import stream_add


def stream_updates(rows: int, k: int, n: int) -> None:
    x = torch.randn(rows, k, device="cuda").to(torch.bfloat16)
    w = (torch.randn(n, k, device="cuda") / k**0.5).to(torch.bfloat16)
    b = torch.randn(n, device="cuda")
    y0 = torch.randn(1, rows, n, device="cuda")
    y = y0.clone()
    d = F.linear(x, w).view(1, rows, n)
    want = y0 + d.float() + b
    stream_add(y, d, b, 1.0)
    err = (y - want).abs().max().item()
    stream_add(y, d, b, -1.0)
    back = (y - y0).abs().max().item()
    print(
        f"## y ({rows}, {n}) += x ({rows}, {k}) W^T + b   stream_add err {err:.2e}, undone {back:.2e}"
    )
    bb = b.to(torch.bfloat16)
    y2 = y[0]
    rows_ = {
        "F.linear(x, w, b) + y.add_ (the model's)": lambda: y2.add_(F.linear(x, w, bb)),
        "F.linear(x, w, b) alone": lambda: F.linear(x, w, bb),
        "y.add_(d) alone (fp32 += bf16)": lambda: y2.add_(d[0]),
        "F.linear(x, w) + stream_add(y, d, b)": lambda: stream_add(y, F.linear(x, w).view(1, rows, n), b, 1.0),
        "stream_add alone": lambda: stream_add(y, d, b, 1.0),
    }  # fmt: skip
    try:
        got = torch.addmm(y0[0], x, w.T, out_dtype=torch.float32)
        print(f"addmm out_dtype err {(got - (y0[0] + d[0].float())).abs().max().item():.2e}")
        rows_["addmm(y, x, W^T, out_dtype=fp32, out=y) (no bias)"] = lambda: torch.addmm(
            y2, x, w.T, out_dtype=torch.float32, out=y2
        )
    except Exception as e:  # older torch, or no fp32-output GEMM
        print(f"addmm out_dtype unavailable: {type(e).__name__}: {e}")
    for name, fn in rows_.items():
        print(f"  {name:55s} {median_us(fn):8.1f} us")


def ln_backward(rows: int, width: int, parts: int, sweep: bool) -> None:
    P = width
    xs = tuple(torch.randn(1, rows, P, device="cuda") for _ in range(parts))
    wt = torch.randn(P * parts, device="cuda")
    bs = torch.randn(P * parts, device="cuda")
    _, mean, rstd = tln.layer_norm_forward(xs, wt, bs, 1e-5, torch.bfloat16)
    g = torch.randn(1, rows, P * parts, device="cuda").to(torch.bfloat16)
    into = tuple(torch.zeros_like(x) for x in xs)
    moved = parts * rows * P * (4 + 2 + 8)  # x read, g read, into read + written
    floor = moved / 3.35e12 * 1e6
    copy_us = median_us(lambda: into[0].copy_(xs[0]))
    print(
        f"## LN backward ({rows}, {parts} x {P}) into: {moved / 1e6:.0f} MB, {floor:.1f} us at"
        f" 3.35 TB/s; a copy of one part moves {2 * rows * P * 4 / copy_us / 1e6:.2f} TB/s"
    )
    default = tln._shape(P, parts)
    default_steps = tln._steps(xs[0].device, triton.cdiv(rows, default[0]))
    print(
        f"  default: {tln.layer_norm_backward.__name__} {median_us(lambda: tln.layer_norm_backward(xs, wt, g, mean, rstd, into)):8.1f} us (BLOCK_M {default[0]}, steps {default_steps}, warps {default[2]})"
    )
    if not sweep:
        return
    x1, x2 = xs[0], xs[-1]
    d1, d2 = into[0], into[-1]
    block_p = triton.next_power_of_2(P)
    for block_m, steps, warps in itertools.product((4, 8, 16), (1, 2, 4, 8), (4, 8)):
        if block_m * block_p * parts > 16384:
            continue
        programs = triton.cdiv(rows, steps * block_m)
        sums = torch.empty(2, programs, P * parts, device="cuda")

        def run(block_m=block_m, steps=steps, warps=warps, programs=programs, sums=sums):
            tln._ln_bwd_kernel[(programs,)](
                x1, x2, wt, g, mean, rstd, d1, d2, sums[0], sums[1], rows, rows,
                x1.stride(0), x1.stride(1), x2.stride(0), x2.stride(1),
                d1.stride(0), d1.stride(1), d2.stride(0), d2.stride(1), P, P * parts,
                TWO=parts == 2, STEPS=steps, ACCUMULATE=True, BLOCK_M=block_m,
                BLOCK_P=block_p, num_warps=warps,
            )  # fmt: skip
            sums.sum(1)

        try:
            us = median_us(run)
        except Exception as e:  # out of resources for this shape
            print(
                f"  BLOCK_M {block_m:2d} steps {steps:2d} warps {warps:2d}  failed: {type(e).__name__}"
            )
            continue
        print(
            f"  BLOCK_M {block_m:2d} steps {steps:2d} warps {warps:2d} programs {programs:6d}  {us:8.1f} us"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ln-sweep", action="store_true", help="every LN launch shape, not the default alone"
    )
    args = parser.parse_args()
    print(
        f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}"
    )
    for rows, k, n in ((16384, 2048, 512), (32768, 512, 512), (16384, 256, 64), (65536, 64, 64)):
        stream_updates(rows, k, n)
    for rows, width, parts in ((16384, 512, 1), (262144, 512, 1), (16384, 512, 2), (65536, 64, 1)):
        ln_backward(rows, width, parts, args.ln_sweep)


if __name__ == "__main__":
    main()
