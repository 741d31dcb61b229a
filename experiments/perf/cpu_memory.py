"""The training step's peak memory, measured on the CPU, per token: where no GPU is at hand.

    TRITON_INTERPRET=1 python experiments/perf/cpu_memory.py --config base --seq 512 1024

Runs the step of profile_step.py (causal byte LM, batch 1, bf16 autocast, forward + backward)
on the CPU with the fused Triton round kernels under Triton's interpreter, and counts the
bytes of every tensor alive (live_bytes.LiveBytes). Prints per length: the peak after the
forward pass and over the step (weights excluded), the weights, and the largest storages alive
at the peak. With two or more lengths it also prints bytes per token (the slope between the
two longest) and what that predicts at --predict lengths: weights + slope * length, the figure
to hold against `torch.cuda.max_memory_allocated` on a GPU (which adds its 512-byte rounding).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bytes import LiveBytes
from profile_step import SIZES, axial

from reformer_lab.model import ReformerConfig, ReformerLM
from reformer_lab.model.attention import lsh_rounds


def build(config: str, seq: int, **overrides) -> ReformerLM:
    """profile_step.py's model on the CPU; `overrides`: ReformerConfig fields (depth, ...)."""
    options = dict(SIZES[config], backend="triton", **overrides)
    cfg = ReformerConfig(vocab_size=256, max_seq_len=seq, axial_shape=axial(seq), **options)
    return ReformerLM(cfg)


class _NoLaunch:
    """Stands in for a Triton kernel: `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def kernels_skipped() -> Iterator[None]:
    """The fused kernels (rounds, LayerNorm, hashing) launch nothing: every buffer is still
    allocated by the same Python wrappers (the kernels only write into them), so the bytes
    counted are the same, in seconds instead of the interpreter's minutes. The values computed
    are garbage."""
    from reformer_lab.kernels import (
        triton_hashing,
        triton_layer_norm,
        triton_round_backward,
        triton_rounds,
    )

    saved = {
        (module, n): getattr(module, n)
        for module in (triton_rounds, triton_round_backward, triton_layer_norm, triton_hashing)
        for n in vars(module)
        if n.startswith("_") and n.endswith("_kernel")
    }
    try:
        for module, n in saved:
            setattr(module, n, _NoLaunch())
        yield
    finally:
        for (module, n), kernel in saved.items():
            setattr(module, n, kernel)


def fused_on_cpu() -> None:
    """Every fused kernel's Python path on CPU tensors (needs TRITON_INTERPRET=1)."""
    from reformer_lab.model import layer_norm
    from reformer_lab.model.attention import hashing

    for module in (lsh_rounds, layer_norm, hashing):
        module.FUSED_ON_CPU_UNDER_INTERPRETER = True


def measure(config: str, seq: int, **overrides) -> dict:
    """Peak bytes after the forward pass and over the step (second step; the first warms up)."""
    torch.manual_seed(0)
    model = build(config, seq, **overrides)
    tokens = torch.randint(0, 256, (1, seq + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    result: dict = {}
    for step in range(2):
        model.zero_grad(set_to_none=True)
        with LiveBytes(owners=None) as meter:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model.loss(inputs, targets).loss
            forward_peak = meter.peak
            loss.backward()
        if step:
            result = dict(
                seq=seq,
                forward=forward_peak,
                step=meter.peak,
                weights=weights,
                owners=meter.peak_owners,
            )
    return result


def per_token_by_op(a: dict, b: dict) -> list[tuple[str, float]]:
    """(op, bytes per token) of the storages alive at the peak, from two lengths' peaks."""
    sums = [Counter(), Counter()]
    for counts, row in zip(sums, (a, b)):
        for nbytes, op in row["owners"]:
            counts[op] += nbytes
    ops = set(sums[0]) | set(sums[1])
    slopes = [(op, (sums[1][op] - sums[0][op]) / (b["seq"] - a["seq"])) for op in ops]
    return sorted((s for s in slopes if abs(s[1]) >= 1), key=lambda s: -s[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base", choices=sorted(SIZES))
    parser.add_argument("--seq", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--depth", type=int, default=None, help="layers (default: the config's)")
    parser.add_argument(
        "--ff-chunks",
        type=int,
        default=2,
        help="FF chunks per sequence (2: as the benchmark at 64K, 32K positions per chunk)",
    )
    parser.add_argument(
        "--attn-chunks",
        type=lambda a: a if a == "auto" else int(a),
        default=1,
        help="attention head groups, or auto",
    )
    parser.add_argument("--loss-chunk", type=int, default=None, help="positions per loss chunk")
    parser.add_argument(
        "--run-kernels",
        action="store_true",
        help="run the kernels in the interpreter (slow) instead of skipping them",
    )
    parser.add_argument("--predict", nargs="*", type=int, default=[65536, 262144, 1048576])
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("set TRITON_INTERPRET=1 so the fused kernels run on the CPU")
    fused_on_cpu()
    overrides = dict(
        ff_chunks=args.ff_chunks, attn_chunks=args.attn_chunks, loss_chunk_size=args.loss_chunk
    )
    if args.depth is not None:
        overrides["depth"] = args.depth
    with contextlib.nullcontext() if args.run_kernels else kernels_skipped():
        rows = [measure(args.config, seq, **overrides) for seq in sorted(args.seq)]
    print(
        f"# {args.config}, depth {args.depth or SIZES[args.config]['depth']}, "
        f"ff_chunks {args.ff_chunks}, attn_chunks {args.attn_chunks}, "
        f"loss_chunk {args.loss_chunk or 'default'}, CPU, live bytes, "
        f"kernels {'run' if args.run_kernels else 'skipped'}"
    )
    print("seq      forward_MB  step_MB  weights_MB  largest storages alive at the peak (MB, op)")
    for r in rows:
        owners = ", ".join(f"{b / 1e6:.2f} {op}" for b, op in r["owners"][:8])
        print(
            f"{r['seq']:<8d} {r['forward'] / 1e6:<11.2f} {r['step'] / 1e6:<8.2f} "
            f"{r['weights'] / 1e6:<11.2f} {owners}"
        )
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        per_token = (b["step"] - a["step"]) / (b["seq"] - a["seq"])
        fwd_per_token = (b["forward"] - a["forward"]) / (b["seq"] - a["seq"])
        print(f"bytes per token: step {per_token:.0f}, forward {fwd_per_token:.0f}")
        print("bytes per token alive at the step's peak, by the op that made them:")
        for op, nbytes in per_token_by_op(a, b):
            print(f"  {nbytes:8.0f}  {op}")
        for n in args.predict:
            gb = (b["weights"] + b["step"] + per_token * (n - b["seq"])) / 1e9
            print(f"predicted peak at {n}: {gb:.3f} GB (weights + step)")


if __name__ == "__main__":
    main()
