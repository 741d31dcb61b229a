"""What is allocated at the moment a training step peaks on the GPU, and who allocated it.

    PYTHONPATH=src python experiments/perf/memory_peak.py --config tiny --seq 65536

Runs profile_step.py's step (causal byte LM, batch 1, bf16 autocast) once to warm up, then
once more with the CUDA caching allocator's history recorded
(`torch.cuda.memory._record_memory_history`), replays the recorded allocations and frees to
find the moment of the step's largest allocated total, and prints the blocks alive then,
grouped by the innermost reformer_lab (or torch) source line that allocated them. Blocks alive
before recording began (weights, the cuBLAS workspaces, the kept streams...) are listed as
one line with their total: `torch.cuda.memory_allocated()` at the start.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_step import build


def _where(frames: list[dict]) -> str:
    """The innermost frame in this project's code, else the innermost Python frame."""
    for frame in frames:
        name = frame.get("filename", "")
        if "reformer_lab" in name or "experiments" in name:
            short = name.split("reformer_lab/")[-1]
            return f"{short}:{frame.get('line')} {frame.get('name')}"
    for frame in frames:
        if frame.get("filename", "").endswith(".py"):
            return f"{frame['filename'].split('/')[-1]}:{frame.get('line')} {frame.get('name')}"
    return frames[0].get("name", "?") if frames else "?"


def peak_blocks(trace: list[dict]) -> tuple[int, dict[int, tuple[int, list]]]:
    """(largest allocated delta, {addr: (size, frames)} alive at that moment) of one device."""
    live: dict[int, tuple[int, list]] = {}
    total = best = 0
    best_index = -1
    for i, event in enumerate(trace):
        action = event["action"]
        if action == "alloc":
            live[event["addr"]] = (event["size"], event.get("frames", []))
            total += event["size"]
            if total > best:
                best, best_index = total, i
        elif action == "free_requested" and event["addr"] in live:
            total -= live.pop(event["addr"])[0]
    live = {}
    for event in trace[: best_index + 1]:
        if event["action"] == "alloc":
            live[event["addr"]] = (event["size"], event.get("frames", []))
        elif event["action"] == "free_requested":
            live.pop(event["addr"], None)
    return best, live


def step(model, tokens: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.loss(tokens[:, :-1], tokens[:, 1:]).loss
    loss.backward()
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", choices=("base", "tiny"))
    parser.add_argument("--seq", type=int, nargs="+", default=[65536])
    parser.add_argument("--ff-chunks", type=int, default=32768, help="positions per FF chunk")
    parser.add_argument("--attn-chunks", default="auto")
    parser.add_argument("--loss-chunk", type=int, default=None, help="positions per loss chunk")
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument(
        "--acc-mib", type=int, default=None, help="kernels.rounds.ACCUMULATOR_BYTES in MiB"
    )
    args = parser.parse_args()
    if args.acc_mib is not None:
        from reformer_lab.kernels import rounds

        rounds.ACCUMULATOR_BYTES = args.acc_mib << 20
    chunks = args.attn_chunks if args.attn_chunks == "auto" else int(args.attn_chunks)
    for seq in args.seq:
        model = build(args.config, seq, "triton", args.ff_chunks, chunks, args.loss_chunk)
        tokens = torch.randint(0, 256, (1, seq + 1), device="cuda")

        step(model, tokens)  # warm-up: workspaces, kernels
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        torch.cuda.memory._record_memory_history(stacks="python", max_entries=1_000_000)
        step(model, tokens)
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        peak = torch.cuda.max_memory_allocated()
        delta, live = peak_blocks(snapshot["device_traces"][0])
        groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for size, frames in live.values():
            entry = groups[_where(frames)]
            entry[0] += size
            entry[1] += 1
        print(
            f"## {args.config} @ {seq}: max_memory_allocated {peak / 1e9:.3f} GB = "
            f"{before / 1e9:.3f} GB alive before the step + {delta / 1e9:.3f} GB at its peak"
        )
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        print(
            f"  {before / 1e6:9.1f} MB  alive before the step, of which weights {weights / 1e6:.1f} MB"
        )
        for where, (size, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: args.top]:
            print(f"  {size / 1e6:9.1f} MB  {n:3d} blocks  {where}")
        del model, tokens
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
