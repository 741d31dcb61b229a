"""Every operator a training step launches, with the bytes it moves: the GPU's glue, counted on
the CPU.

    TRITON_INTERPRET=1 PYTHONPATH=src python experiments/perf/op_census.py --config base --seq 8192

Runs profile_step.py's step (causal byte LM, batch 1, bf16 autocast, forward + backward) on
the CPU with every fused Triton kernel's wrapper on and its launch skipped (cpu_memory.py),
and records each aten operator that does work (views excluded): its count, the bytes of its
tensor inputs and outputs, and, for matrix products, the FLOPs. Each aten operator is about
one CUDA kernel there; the bytes over the GPU's bandwidth are the least time it can take, and
the count times a few microseconds is its launch cost. Triton launches are counted by kernel.
Prints the operators by bytes moved, scaled to --scale-to tokens (linear in length).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_memory import build, fused_on_cpu, kernels_skipped

MATMULS = {"mm", "addmm", "bmm", "baddbmm"}
NO_DATA = {
    "detach",
    "lift_fresh",
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "_unsafe_view",
}


def _bytes(t: torch.Tensor) -> int:
    """Bytes a kernel must touch for t: its elements, or its storage when t is broadcast."""
    return min(t.numel(), t.untyped_storage().nbytes() // t.element_size()) * t.element_size()


class OpCensus(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # n, bytes, flops
        self.detail: set[str] = set()
        self.shapes: dict[tuple[str, str], float] = defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if func.is_view or name in NO_DATA or _self_copy(name, args):
            return out
        tensors = [
            x
            for x in torch.utils._pytree.tree_leaves((args, kwargs, out))
            if isinstance(x, torch.Tensor)
        ]
        entry = self.ops[name]
        entry[0] += 1
        nbytes = sum(_bytes(t) for t in tensors)
        entry[1] += nbytes
        if name in self.detail:
            key = " ".join(f"{tuple(t.shape)}{str(t.dtype)[6:]}" for t in tensors)
            self.shapes[(name, key)] += nbytes
        if name in MATMULS:
            a, b = _operands(args)
            entry[2] += 2 * a.numel() * b.shape[-1]
        return out


def _self_copy(name: str, args) -> bool:
    """`t[s] += x` ends in copy_(t[s], t[s]): the same memory, which copy_ skips on the GPU."""
    if name != "copy_" or len(args) < 2:
        return False
    dst, src = args[0], args[1]
    return (
        isinstance(src, torch.Tensor)
        and dst.data_ptr() == src.data_ptr()
        and dst.stride() == src.stride()
        and dst.shape == src.shape
        and dst.dtype == src.dtype
    )


def _operands(args) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = [x for x in args if isinstance(x, torch.Tensor)]
    return tensors[-2], tensors[-1]


class _CountingLaunch:
    """A skipped Triton kernel that counts its launches."""

    def __init__(self, name: str, counts: dict) -> None:
        self.name, self.counts = name, counts

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.counts[self.name] += 1

        return launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base", choices=("base", "tiny"))
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--scale-to", type=int, default=65536, help="tokens to scale bytes to")
    parser.add_argument("--ff-chunks", type=int, default=1)
    parser.add_argument("--attn-chunks", default="auto")
    parser.add_argument("--bandwidth", type=float, default=4.0e12, help="bytes/s for the ms column")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--detail", nargs="*", default=[], help="ops whose shapes to list")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("set TRITON_INTERPRET=1 so the fused kernels' wrappers run on the CPU")
    fused_on_cpu()
    chunks = args.attn_chunks if args.attn_chunks == "auto" else int(args.attn_chunks)
    torch.manual_seed(0)
    model = build(args.config, args.seq, ff_chunks=args.ff_chunks, attn_chunks=chunks)
    tokens = torch.randint(0, 256, (1, args.seq + 1))
    launches: dict[str, int] = defaultdict(int)
    with kernels_skipped():
        from reformer_lab.kernels import (
            triton_hashing,
            triton_layer_norm,
            triton_round_backward,
            triton_rounds,
        )

        for module in (triton_rounds, triton_round_backward, triton_layer_norm, triton_hashing):
            for n in vars(module):
                if n.startswith("_") and n.endswith("_kernel"):
                    setattr(module, n, _CountingLaunch(n, launches))
        for _ in range(2):  # the second step is counted
            census = OpCensus()
            census.detail = set(args.detail)
            launches.clear()
            model.zero_grad(set_to_none=True)
            with census, torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model.loss(tokens[:, :-1], tokens[:, 1:]).loss
                loss.backward()
    scale = args.scale_to / args.seq
    rows = sorted(census.ops.items(), key=lambda kv: -kv[1][1])
    total_n = sum(v[0] for v in census.ops.values())
    glue = sum(v[1] for k, v in census.ops.items() if k not in MATMULS) * scale
    flops = sum(v[2] for v in census.ops.values()) * scale
    print(
        f"# {args.config} at {args.seq} tokens, bytes scaled to {args.scale_to}: {total_n} aten ops, "
        f"{sum(launches.values())} Triton launches; non-matmul bytes {glue / 1e9:.2f} GB "
        f"(>= {glue / args.bandwidth * 1e3:.1f} ms at {args.bandwidth / 1e12:.1f} TB/s); "
        f"matmul {flops / 1e9:.3f} GFLOP"
    )
    print("op                          count   GB      ms(bw)")
    for name, (n, nbytes, _) in rows[: args.top]:
        gb = nbytes * scale / 1e9
        print(f"{name:27s} {n:6d}  {gb:7.3f} {gb * 1e9 / args.bandwidth * 1e3:7.2f}")
    print("triton launches:", dict(launches))
    for (name, shapes), nbytes in sorted(census.shapes.items(), key=lambda kv: -kv[1])[:40]:
        print(f"  {name:14s} {nbytes * scale / 1e9:7.3f} GB  {shapes}")


if __name__ == "__main__":
    main()
