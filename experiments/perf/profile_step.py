"""Where a reformer-lab training step spends memory and time, phase by phase (GPU).

    python experiments/perf/profile_step.py --config base --seq 4096 16384 65536 --backend torch triton

Prints, per (config, seq, backend): peak GB after forward, peak GB over the whole step,
forward ms and forward+backward ms (CUDA events, median of --steps after one warm-up).
Complements experiments/benchmarks (the comparison with peers) with a breakdown for tuning.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from reformer_lab.model import ReformerConfig, ReformerLM

SIZES = {
    "base": dict(dim=512, depth=6, heads=8, bucket_size=64, n_hashes=4),
    "tiny": dict(dim=64, depth=2, heads=4, bucket_size=16, n_hashes=4),
}


def axial(seq: int) -> tuple[int, int]:
    first = 1 << (max(0, (seq - 1).bit_length()) // 2)
    return first, -(-seq // first)


def build(
    config: str,
    seq: int,
    backend: str,
    ff_chunks: int,
    attn_chunks: int | str,
    loss_chunk: int | None,
    offload: bool = False,
) -> ReformerLM:
    cfg = ReformerConfig(
        offload_streams=offload,
        vocab_size=256,
        max_seq_len=seq,
        axial_shape=axial(seq),
        backend=backend,
        ff_chunks=max(1, seq // ff_chunks),
        attn_chunks=attn_chunks
        if attn_chunks == "auto"
        else min(attn_chunks, SIZES[config]["heads"]),
        loss_chunk_size=loss_chunk,
        **SIZES[config],
    )
    return ReformerLM(cfg).cuda()


def profile(
    config: str,
    seq: int,
    backend: str,
    steps: int,
    ff_chunks: int,
    attn_chunks: int | str,
    loss_chunk: int | None = None,
    graph: bool = False,
    offload: bool = False,
) -> dict:
    model = build(config, seq, backend, ff_chunks, attn_chunks, loss_chunk, offload)
    tokens = torch.randint(0, 256, (1, seq + 1), device="cuda")
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if graph:  # a replay has no forward of its own to time
        step_ms, step_peak = replayed(model, inputs, targets, steps)
        forward = dict(fwd_peak_gb="-", fwd_ms="-")
    else:
        fwd_peak, fwd_ms, step_ms, step_peak = eager(model, inputs, targets, steps)
        forward = dict(fwd_peak_gb=round(fwd_peak, 3), fwd_ms=round(statistics.median(fwd_ms), 2))
    med = statistics.median(step_ms)
    return dict(
        config=config,
        seq=seq,
        backend=f"{backend}/a{attn_chunks}"
        + ("/graph" if graph else "")
        + ("/offload" if offload else ""),
        **forward,
        peak_gb=round(step_peak, 3),
        step_ms=round(med, 2),
        tok_per_s=round(seq / med * 1e3),
    )


def eager(model: ReformerLM, inputs, targets, steps: int) -> tuple[float, list, list, float]:
    """Peak GB after the forward, forward ms, step ms, step peak GB (after a warm-up step)."""
    fwd_ms, step_ms, fwd_peak, step_peak = [], [], 0.0, 0.0
    for i in range(steps + 1):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, mid, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        start.record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(inputs, targets).loss
        mid.record()
        torch.cuda.synchronize()
        peak_fwd = torch.cuda.max_memory_allocated() / 1e9
        loss.backward()
        end.record()
        torch.cuda.synchronize()
        if i:  # the first step warms up
            fwd_ms.append(start.elapsed_time(mid))
            step_ms.append(start.elapsed_time(end))
            fwd_peak = max(fwd_peak, peak_fwd)
            step_peak = max(step_peak, torch.cuda.max_memory_allocated() / 1e9)
    return fwd_peak, fwd_ms, step_ms, step_peak


def replayed(model: ReformerLM, inputs, targets, steps: int) -> tuple[list, float]:
    """The step captured as a CUDA graph (`CapturedTrainingStep`) and replayed: step ms, and
    the peak GB over the capture (an eager warm-up step and the recording) and the replays, as
    a replay allocates nothing."""
    from reformer_lab.model.captured_step import CapturedTrainingStep

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step = CapturedTrainingStep(model, inputs, targets)
    step_ms = []
    for i in range(steps + 1):
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        step(inputs, targets)
        end.record()
        torch.cuda.synchronize()
        if i:  # the first replay warms up
            step_ms.append(start.elapsed_time(end))
    return step_ms, torch.cuda.max_memory_allocated() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["base"], choices=sorted(SIZES))
    parser.add_argument("--seq", nargs="+", type=int, default=[4096, 16384, 65536])
    parser.add_argument("--backend", nargs="+", default=["torch", "triton"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ff-chunks", type=int, default=32768, help="positions per FF chunk")
    parser.add_argument(
        "--attn-chunks", type=chunks_arg, nargs="+", default=["auto"], help="'auto' or an int"
    )
    parser.add_argument(
        "--acc-mib",
        type=int,
        default=None,
        help="the fused backward's accumulator budget (kernels.rounds.ACCUMULATOR_BYTES) in MiB",
    )
    parser.add_argument(
        "--loss-chunk", type=int, default=None, help="positions per loss chunk (default: model's)"
    )
    parser.add_argument(
        "--graph", action="store_true", help="time the step captured as a CUDA graph instead"
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        help="offload_streams=True: the residual streams in host memory (streamed.py)",
    )
    parser.add_argument(
        "--round-bwd",
        default=None,
        help="the shared-QK rounds' backward: 'off' (dk/dv and dq launches) or 'SPAN,WARPS,STAGES'"
        " of the one-launch kernel (kernels.rounds.ONE_LAUNCH_BACKWARD for d = C = 64 and 16)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="also print the top CUDA kernels of one step (torch.profiler)",
    )
    args = parser.parse_args()
    if args.acc_mib is not None:
        from reformer_lab.kernels import rounds

        rounds.ACCUMULATOR_BYTES = args.acc_mib << 20
    if args.round_bwd is not None:
        from reformer_lab.kernels import rounds

        shape = None if args.round_bwd == "off" else tuple(map(int, args.round_bwd.split(",")))
        rounds.ONE_LAUNCH_BACKWARD.update({(64, 64): shape, (16, 16): shape})
        print(f"# one-launch round backward: {shape}")
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    print("config  seq      backend  fwd_peak_gb  peak_gb  fwd_ms    step_ms   tok/s", flush=True)
    for config in args.config:
        for seq in args.seq:
            for backend, attn_chunks in [(b, a) for b in args.backend for a in args.attn_chunks]:
                try:
                    r = profile(
                        config,
                        seq,
                        backend,
                        args.steps,
                        args.ff_chunks,
                        attn_chunks,
                        args.loss_chunk,
                        graph=args.graph,
                        offload=args.offload,
                    )
                    print(
                        f"{config:7s} {seq:<8d} {r['backend']:10s} {r['fwd_peak_gb']:<12} "
                        f"{r['peak_gb']:<8} {r['fwd_ms']:<9} {r['step_ms']:<9} {r['tok_per_s']}",
                        flush=True,
                    )
                except torch.OutOfMemoryError:
                    print(f"{config:7s} {seq:<8d} {backend:8s} OOM", flush=True)
                except Exception as e:  # report and go on to the next setting
                    print(
                        f"{config:7s} {seq:<8d} {backend:8s} ERROR {type(e).__name__}: {e}"[:300],
                        flush=True,
                    )
                if args.trace:
                    trace(config, seq, backend, args.ff_chunks, attn_chunks, args.offload)
                torch.cuda.empty_cache()


def chunks_arg(text: str) -> int | str:
    return text if text == "auto" else int(text)


KERNEL_KINDS = (
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas")),
    ("lsh rounds fwd", ("_round_fwd",)),
    ("lsh rounds dk/dv", ("_round_dkdv",)),
    ("lsh rounds dq", ("_round_dq",)),
    ("lsh rounds bwd (one launch)", ("_round_bwd",)),
    ("lsh row dot", ("_row_dot",)),
    ("sort", ("sort", "radix")),
    ("layer norm", ("layer_norm", "layernorm")),
    ("softmax/ce", ("softmax", "log_softmax", "nll", "cross_entropy")),
    ("reduce", ("reduce",)),
    ("index/gather/scatter", ("index", "gather", "scatter")),
    ("copy/fill/cat", ("copy", "memcpy", "memset", "fill", "cat", "catarray")),
    ("elementwise", ("elementwise",)),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KERNEL_KINDS:
        if any(key in low for key in keys):
            return kind
    return "other"


def trace(
    config: str,
    seq: int,
    backend: str,
    ff_chunks: int,
    attn_chunks: int | str,
    offload: bool = False,
) -> None:
    """One training step under torch.profiler: the kernels summed by kind (count, GPU ms),
    their total against the step's wall time (the GPU's idle share), and the 25 kernels that
    take the most time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = build(config, seq, backend, ff_chunks, attn_chunks, None, offload)
    tokens = torch.randint(0, 256, (1, seq + 1), device="cuda")
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(tokens[:, :-1], tokens[:, 1:]).loss
        loss.backward()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(tokens[:, :-1], tokens[:, 1:]).loss
        loss.backward()
        end.record()
        torch.cuda.synchronize()
    kinds: dict[str, list[float]] = {}
    for event in prof.key_averages():
        gpu_us = getattr(event, "self_device_time_total", 0) or 0
        if gpu_us <= 0:
            continue
        entry = kinds.setdefault(kernel_kind(event.key), [0, 0.0])
        entry[0] += event.count
        entry[1] += gpu_us / 1e3
    total = sum(ms for _, ms in kinds.values())
    wall = start.elapsed_time(end)
    print(
        f"## {config} {seq}: {sum(n for n, _ in kinds.values())} kernels, {total:.1f} ms of "
        f"GPU work in a {wall:.1f} ms step (profiled; GPU busy {100 * total / wall:.0f}%)"
    )
    for kind, (n, ms) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        print(f"  {kind:22s} {n:6d} kernels {ms:9.2f} ms  {100 * ms / total:5.1f}%")
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    )


if __name__ == "__main__":
    main()
