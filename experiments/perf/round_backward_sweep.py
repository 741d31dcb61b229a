"""Time the shared-QK rounds' backward: the two launches a round (dk/dv, then dq) against the
one-launch kernel (`triton_round_backward`) over its launch shapes (GPU).

    PYTHONPATH=src python experiments/perf/round_backward_sweep.py [--shapes "base 64K" ...]

Shapes as the model's step runs them: q and v as the two column blocks of one (B, L, 2 H d)
bf16 projection, causal, one head a pass (`--acc-mib 8`: base at 64K and 256K, tiny at 64K
and 1M), R = 4 rounds of random buckets. Each candidate is first checked against the two
launches' gradients (relative L2 difference under 1e-2; both round in bf16 differently),
then timed: the whole `lsh_rounds_backward` (every round, its accumulators and the row dot)
ten times in a CUDA graph, median of 20 replays.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_gelu_sweep import median_us

from reformer_lab.kernels import lsh_rounds_backward, lsh_rounds_forward
from reformer_lab.kernels import triton_chunked as tc
from reformer_lab.kernels.rounds import default_round_configs

SHAPES = {  # name: (H a pass, L, d = C)
    "base 64K": (1, 1 << 16, 64),
    "base 256K": (1, 1 << 18, 64),
    "tiny 64K": (1, 1 << 16, 16),
    "tiny 1M": (1, 1 << 20, 16),
}
CANDIDATES = {  # (span, num_warps, num_stages) by d = C
    64: [(1, 8, 2), (2, 8, 2), (4, 8, 2), (8, 8, 2), (2, 8, 1), (4, 8, 1), (1, 4, 2), (2, 4, 2)],
    16: [(1, 2, 2), (2, 2, 2), (4, 2, 2), (8, 2, 2), (4, 4, 2), (8, 4, 2), (16, 2, 2)],
}


def inputs(H: int, L: int, d: int, R: int = 4) -> tuple:
    qv = torch.randn(1, L, 2, H, d, device="cuda").to(torch.bfloat16)  # the joint projection
    q, v = qv[:, :, 0].transpose(1, 2), qv[:, :, 1].transpose(1, 2)  # (1, H, L, d) each
    buckets = torch.randint(0, max(2, L // d), (1, H, R, L), device="cuda", dtype=torch.int32)
    order = torch.sort(buckets, dim=-1, stable=True).indices  # (1, H, R, L)
    dout = torch.randn(1, H, L, d, device="cuda").to(torch.bfloat16)
    opts = dict(chunk_size=d, scale=d**-0.5, causal=True)
    out, lse, stats = lsh_rounds_forward(q, None, v, order, stats=True, **opts)
    return q, v, order, dict(opts, out=out, lse=lse, stats=stats, dout=dout)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def sweep(name: str, H: int, L: int, d: int) -> tuple[float, tc.RunConfig | None]:
    q, v, order, opts = inputs(H, L, d)
    default = default_round_configs(d, d, torch.bfloat16)
    two = tc.KernelConfigs(default.fwd, default.dkdv, default.dq, None)
    backward = lambda configs: lsh_rounds_backward(q, None, v, order, configs=configs, **opts)  # noqa: E731
    ref = backward(two)
    base_us = median_us(lambda: backward(two))
    print(f"## {name} (H={H}, L={L}, d=C={d}, R=4)  default: {default.bwd}")
    print(f"  two launches a round             {base_us / 1e3:8.3f} ms")
    best = (base_us, None)
    for span, warps, stages in CANDIDATES[d]:
        cfg = tc.RunConfig(span=span, num_warps=warps, num_stages=stages)
        configs = tc.KernelConfigs(default.fwd, default.dkdv, default.dq, cfg)
        got = backward(configs)
        err = max(relative(got[0], ref[0]), relative(got[2], ref[2]))
        if not err < 1e-2:
            print(f"  span={span} warps={warps} stages={stages}: WRONG (relative {err:.2e})")
            continue
        us = median_us(lambda configs=configs: backward(configs))
        print(
            f"  one launch span={span:2d} warps={warps} stages={stages}  {us / 1e3:8.3f} ms"
            f"  ({us / base_us:5.2f}x)  diff {err:.1e}",
            flush=True,
        )
        best = min(best, (us, cfg), key=lambda x: x[0])
    print(f"  fastest: {best[1] or 'two launches'} {best[0] / 1e3:.3f} ms")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    for name in args.shapes:
        sweep(name, *SHAPES[name])


if __name__ == "__main__":
    main()
