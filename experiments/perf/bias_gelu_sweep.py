"""Time the bias + GELU backward kernel's launch shapes against autograd's two kernels (GPU).

    PYTHONPATH=src python experiments/perf/bias_gelu_sweep.py

For each (rows, features) of one FF chunk (base: 16K x 2048, tiny: 16K x 256), prints the
microseconds of: torch's GELU backward plus the bias-gradient sum (what autograd runs when
nn.Linear carries the bias), torch's GELU forward, the fused forward, and the fused backward
at each launch shape (BLOCK_M, BLOCK_F, STEPS, warps). Ten calls captured in a CUDA graph,
CUDA events around its replays, median of 20; the default shape (`backward_shape`) is marked.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from reformer_lab.kernels import triton_bias_gelu as tbg


def median_us(fn, repeats: int = 20, calls: int = 10) -> float:
    """GPU microseconds of one fn() call: `calls` calls captured in a CUDA graph, the graph
    replayed `repeats` times (median). Timed eagerly, a call this short measures the host's
    launch overhead (~100 us for the Triton wrappers), not the kernel."""
    fn()  # compiles
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def sweep(rows: int, features: int) -> None:
    pre = torch.randn(rows, features, device="cuda").to(torch.bfloat16)
    grad = torch.randn_like(pre)
    bias = torch.randn(features, device="cuda")
    z = (pre.float() + bias).to(torch.bfloat16)

    def autograd_pair():
        dz = torch.ops.aten.gelu_backward(grad, z)
        return dz.sum(0, dtype=torch.float32)

    print(f"## {rows} x {features} bf16 ({torch.cuda.get_device_name()})", flush=True)
    print(f"torch gelu_backward + bias sum   {median_us(autograd_pair):8.1f} us")
    print(
        f"torch gelu forward               {median_us(lambda: torch.nn.functional.gelu(z)):8.1f} us"
    )
    print(
        f"fused forward                    {median_us(lambda: tbg.bias_gelu_forward(pre, bias)):8.1f} us"
    )
    default = tbg.backward_shape(features)
    for block_m, block_f, steps, warps in itertools.product(
        (16, 32, 64, 128), (64, 128), (2, 4, 8, 16), (4, 8)
    ):
        if block_f > features or block_m * block_f > 16384 or block_m * block_f < 1024:
            continue
        shape = tbg.BackwardShape(block_m, block_f, steps, warps)
        us = median_us(lambda s=shape: tbg.bias_gelu_backward(grad, pre, bias, s))
        mark = "  <- default" if shape == default else ""
        print(
            f"fused backward {block_m:3d} x {block_f:3d} steps {steps} warps {warps}  {us:8.1f} us{mark}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["16384x2048", "16384x256"])
    for shape in parser.parse_args().shapes:
        rows, features = map(int, shape.split("x"))
        sweep(rows, features)


if __name__ == "__main__":
    main()
