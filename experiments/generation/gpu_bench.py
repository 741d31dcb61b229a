"""Issue 6's GPU figure: tokens/s generating 1K new tokens after 16K and 64K-token prompts,
reformer-lab's cached `ReformerLM.generate` against transformers' cached
`ReformerModelWithLMHead.generate(use_cache=True)` on the same configuration.

    python experiments/generation/gpu_bench.py                    # 16K and 64K prompts, both
    python experiments/generation/gpu_bench.py --prompts 16384 --impls reformer-lab
    python experiments/generation/gpu_bench.py --cpu-smoke        # tiny sizes on the CPU (tests)

Imports torch, transformers and reformer_lab only (no Lightning).

The configuration is the benchmark harness's `base` (experiments/benchmarks/reformer_bench/
settings.py: dim 512, depth 6, heads 8, bucket 64, 4 hash rounds, vocab 256, d_ff 2048), random
weights, batch 1, greedy. Both models get max_seq_len = prompt + new tokens rounded up to a
power of two (the harness takes powers of two only: 16K + 1K -> 32K, 64K + 1K -> 128K), with
axial positions factored as the harness does. transformers is built as
reformer_bench/impls.py builds it, with is_decoder=True and use_cache=True, and with
chunk_size_feed_forward=0: transformers' feed-forward chunking needs the chunk to divide the
input length, which a 1-token decoding step never does (the transient feed-forward activation
of a 64K prompt is 0.25 GB in bf16, so nothing is lost).

Weights in bf16 (`--dtype auto`: if transformers' generate fails in bf16 on a tiny model
first, both run in fp32 and the reason is recorded). Per (implementation, prompt): one warm-up
generate of a few tokens on the same prompt (kernel compilation, allocator growth; transformers
fixes num_buckets here), then `--repeats` timed generates of `--new-tokens`. A timed generate
is split with CUDA events recorded when the LM head finishes each call: the first call is the
prompt pass, each later one a decoding step, so

    prompt (s)      start -> the prompt pass's logits (includes choosing the first token's logits)
    per token (ms)  (end - prompt pass) / (new tokens - 1), the cached steps
    tokens/s        new tokens / total time, the prompt pass included

and peak memory is torch.cuda.max_memory_allocated over the timed generates (weights, cache,
activations), GB = 1e9 bytes. Each run's failure (out of memory, an error) is recorded and the
next run goes on; results are written (atomically) after every run to --json or
$OUT/gpu_bench.json, and a markdown table is printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reformer_lab.model.attention.hashing import default_n_buckets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reformer_bench import impls
from reformer_bench.settings import SIZES, ModelSize, axial_factors

BASE = SIZES["base"]
SMOKE = ModelSize("smoke", dim=64, depth=2, heads=4, bucket_size=16, n_hashes=2)
IMPLS = ("reformer-lab", "hf")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def max_seq_len_for(prompt: int, new: int) -> int:
    """prompt + new rounded up to a power of two."""
    return 1 << (prompt + new - 1).bit_length()


# --- the two models ---------------------------------------------------------------------
def build_reformer_lab(size: ModelSize, seq: int) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(model, its LM head, settings): the benchmark harness's reformer-lab build."""
    built = impls.build_reformer_lab(size, seq)
    settings = {"max_seq_len": seq, **built.settings}
    return built.model, built.model.head, settings


def build_hf(size: ModelSize, seq: int) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(model, its LM head, settings), as reformer_bench/impls.py builds transformers' Reformer,
    with is_decoder=True, use_cache=True and no feed-forward chunking (module docstring)."""
    from transformers import ReformerConfig as HFConfig
    from transformers import ReformerModelWithLMHead

    half = size.dim // 2
    cfg = HFConfig(
        vocab_size=size.vocab_size, hidden_size=size.dim, num_attention_heads=size.heads,
        attention_head_size=size.dim // size.heads, feed_forward_size=size.ff_mult * size.dim,
        attn_layers=["lsh"] * size.depth, is_decoder=True,
        lsh_attn_chunk_length=size.bucket_size, lsh_num_chunks_before=1, lsh_num_chunks_after=0,
        num_hashes=size.n_hashes, num_buckets=None,
        axial_pos_embds=True, axial_pos_shape=axial_factors(seq),
        axial_pos_embds_dim=(half, size.dim - half), max_position_embeddings=seq,
        chunk_size_feed_forward=0, hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
        use_cache=True, tie_word_embeddings=False, pad_token_id=0, eos_token_id=None,
    )  # fmt: skip
    model = ReformerModelWithLMHead(cfg)
    settings = {"max_position_embeddings": seq, "axial_pos_shape": list(axial_factors(seq)),
                "chunk_size_feed_forward": 0}  # fmt: skip
    return model, model.lm_head, settings


def reformer_lab_generate(model: nn.Module, prompt: Tensor, new: int) -> Tensor:
    return model.generate(prompt, new, temperature=0.0, use_cache=True)


def hf_generate(model: nn.Module, prompt: Tensor, new: int) -> Tensor:
    # transformers' Reformer prints 'Warning: <key> is not a recognized input.' at every step.
    with contextlib.redirect_stdout(io.StringIO()):
        return model.generate(
            prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
            pad_token_id=0, eos_token_id=None,
        )  # fmt: skip


BUILDERS = {"reformer-lab": build_reformer_lab, "hf": build_hf}
GENERATORS = {"reformer-lab": reformer_lab_generate, "hf": hf_generate}


# --- timing -----------------------------------------------------------------------------
class Marks:
    """Points in time on the device's stream: CUDA events, or perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.points: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.points.append(event)
        else:
            self.points.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Seconds from the first mark to each later one."""
        if self.cuda:
            torch.cuda.synchronize()
            return [self.points[0].elapsed_time(p) / 1e3 for p in self.points[1:]]
        return [p - self.points[0] for p in self.points[1:]]


def timed_generate(
    generate: Callable[[int], Tensor],
    head: nn.Module,
    n_prompt: int,
    new: int,
    device: torch.device,
) -> dict[str, float]:
    """One generate of `new` tokens, split at the LM head's calls (module docstring)."""
    marks = Marks(device)
    handle = head.register_forward_hook(lambda *_: marks.mark())
    try:
        marks.mark()
        out = generate(new)
        marks.mark()
    finally:
        handle.remove()
    times = marks.seconds()  # head calls..., end
    head_calls, total = len(times) - 1, times[-1]
    if out.shape[1] != n_prompt + new or head_calls != new:
        raise RuntimeError(
            f"expected {new} new tokens from {new} head calls, got "
            f"{out.shape[1] - n_prompt} tokens and {head_calls} calls"
        )
    prompt_s = times[0]
    return {
        "prompt_s": prompt_s,
        "per_token_ms": 1e3 * (total - prompt_s) / max(new - 1, 1),
        "total_s": total,
        "tokens_per_s": new / total,
    }


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_one(impl: str, size: ModelSize, n_prompt: int, args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up and time one implementation at one prompt length; never raises."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype_used]
    seq = max_seq_len_for(n_prompt, args.new_tokens)
    result: dict[str, Any] = {"impl": impl, "prompt": n_prompt, "new_tokens": args.new_tokens,
                              "max_seq_len": seq, "dtype": args.dtype_used}  # fmt: skip
    try:
        torch.manual_seed(0)
        model, head, settings = BUILDERS[impl](size, seq)
        model = model.to(device=device, dtype=dtype).eval()
        result["settings"] = settings
        result["n_params"] = sum(p.numel() for p in model.parameters())
        generator = torch.Generator().manual_seed(1234)
        prompt = torch.randint(1, size.vocab_size, (1, n_prompt), generator=generator).to(device)

        def generate(new: int) -> Tensor:
            return GENERATORS[impl](model, prompt, new)

        with torch.no_grad():
            timed_generate(generate, head, n_prompt, args.warmup_tokens, device)  # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            runs = [
                timed_generate(generate, head, n_prompt, args.new_tokens, device)
                for _ in range(args.repeats)
            ]
        best = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]  # the median run
        result.update(best, status="ok", repeats=[r["total_s"] for r in runs])
        if device.type == "cuda":
            result["peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        if impl == "hf":
            result["settings"]["num_buckets"] = model.config.num_buckets
        else:
            padded = -(-(n_prompt + args.new_tokens) // size.bucket_size) * size.bucket_size
            result["settings"]["n_buckets"] = default_n_buckets(padded, size.bucket_size)
    except torch.OutOfMemoryError as error:
        result.update(status="oom", message=str(error).splitlines()[0])
    except Exception as error:
        tail = traceback.format_exc().strip().splitlines()[-3:]
        result.update(status="error", message=f"{type(error).__name__}: {error}", traceback=tail)
    return result


def hf_bf16_problem(device: torch.device) -> str | None:
    """None if transformers' Reformer generates in bf16 (a tiny model), else why not."""
    try:
        torch.manual_seed(0)
        model, _, _ = build_hf(SMOKE, 256)
        model = model.to(device=device, dtype=torch.bfloat16).eval()
        prompt = torch.randint(1, SMOKE.vocab_size, (1, 64), device=device)
        with torch.no_grad():
            out = hf_generate(model, prompt, 4)
        if out.shape != (1, 68):
            return f"bf16 generate returned shape {tuple(out.shape)}, expected (1, 68)"
        return None
    except Exception as error:
        return f"{type(error).__name__}: {error}"


# --- report -----------------------------------------------------------------------------
def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per run; reformer-lab rows carry their tokens/s over transformers' (same prompt)."""
    hf_rate = {r["prompt"]: r["tokens_per_s"] for r in results
               if r["impl"] == "hf" and r["status"] == "ok"}  # fmt: skip
    lines = [
        "| impl | prompt | new | dtype | prompt pass (s) | per token (ms) | total (s) | tokens/s "
        "| vs transformers | peak GB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["status"] == "ok":
            speedup = (
                f"{r['tokens_per_s'] / hf_rate[r['prompt']]:.1f}x"
                if r["impl"] == "reformer-lab" and r["prompt"] in hf_rate
                else ""
            )
            peak = f"{r['peak_gb']:.2f}" if "peak_gb" in r else "n/a"
            cells = [f"{r['prompt_s']:.3f}", f"{r['per_token_ms']:.2f}", f"{r['total_s']:.2f}",
                     f"{r['tokens_per_s']:.1f}", speedup, peak, "ok"]  # fmt: skip
        else:
            cells = ["", "", "", "", "", "", f"{r['status']}: {r.get('message', '')[:80]}"]
        lines.append(
            f"| {r['impl']} | {r['prompt']:,} | {r['new_tokens']:,} | {r['dtype']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def environment(device: torch.device) -> dict[str, Any]:
    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": hf_version,
        "python": platform.python_version(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16, or fp32 for both if transformers fails in bf16")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="timed generates per run")
    parser.add_argument("--warmup-tokens", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="runs not started by then are recorded as skipped")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None,
                        help="results file (default: $OUT/gpu_bench.json if OUT is set)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --cpu-smoke)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny model, one 256-token prompt, 16 new tokens, on the CPU")  # fmt: skip
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.prompts, args.new_tokens, args.warmup_tokens = [256], 16, 4
        args.device = args.device or "cpu"
    args.device = args.device or "cuda"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible: run on a GPU, or use --cpu-smoke / --device cpu")
    if min(args.prompts) < 1 or args.new_tokens < 2 or args.repeats < 1 or args.warmup_tokens < 2:
        parser.error("--prompts >= 1, --new-tokens >= 2, --repeats >= 1, --warmup-tokens >= 2")
    if args.json is None and os.environ.get("OUT"):
        args.json = Path(os.environ["OUT"]) / "gpu_bench.json"
    if args.json is not None and args.json.exists() and not args.overwrite:
        parser.error(f"{args.json} exists: pass --overwrite to replace it, or --json another file")
    if "hf" in args.impls:
        try:
            import transformers
        except ImportError:
            parser.error(
                "transformers is not installed: pip install transformers==5.17.0 "
                "(pip install -e '.[bench]'), or run --impls reformer-lab"
            )
        transformers.logging.set_verbosity_error()
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.time()
    device = torch.device(args.device)
    size = SMOKE if args.cpu_smoke else BASE
    args.dtype_used, dtype_note = ("fp32" if args.dtype == "fp32" else "bf16"), None
    if args.dtype == "auto" and "hf" in args.impls:
        problem = hf_bf16_problem(device)
        if problem is not None:
            args.dtype_used = "fp32"
            dtype_note = f"transformers' generate failed in bf16 ({problem}); both run in fp32"
            print(dtype_note, flush=True)
    payload: dict[str, Any] = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "environment": environment(device),
        "size": asdict(size),
        "dtype": args.dtype_used,
        "dtype_note": dtype_note,
        "runs": [],
    }
    for n_prompt in args.prompts:
        for impl in args.impls:
            if time.time() - started > args.budget_s:
                result = {"impl": impl, "prompt": n_prompt, "new_tokens": args.new_tokens,
                          "dtype": args.dtype_used, "status": "skipped",
                          "message": f"time budget --budget-s {args.budget_s:g} spent"}  # fmt: skip
            else:
                result = run_one(impl, size, n_prompt, args)
                release(device)  # run_one's model and caches are unreachable now
            payload["runs"].append(result)
            shown = {k: v for k, v in result.items() if k not in ("settings", "traceback")}
            print(json.dumps(shown, default=str), flush=True)
            if args.json is not None:
                write_json_atomically(args.json, payload)
    payload["wall_s"] = round(time.time() - started, 1)
    if args.json is not None:
        write_json_atomically(args.json, payload)
    env = payload["environment"]
    print(
        f"\n{size.name} config (dim {size.dim}, depth {size.depth}, heads {size.heads}, bucket "
        f"{size.bucket_size}, {size.n_hashes} hashes), batch 1, greedy, {env['device']}, "
        f"torch {env['torch']}, transformers {env['transformers']}\n"
    )
    print(markdown_table(payload["runs"]), flush=True)
    return payload


if __name__ == "__main__":
    main()
