"""Compile the attention kernels (chunked, and the fused LSH rounds) for a GPU on any machine,
and read their resources.

No GPU needed: triton compiles to a cubin for the named target, and the cuobjdump shipped in
triton's wheel reads registers, spill stack and shared memory from it, and counts the matrix
instructions in its SASS: Hopper's warpgroup HGMMA (needs 4 warps or more and 64-row tiles)
and mma.sync HMMA. Spills (stack > 0) or no matrix instruction at all mean a slow launch
shape, found without spending device time.

    python -m reformer_lab.kernels.resources --chunk 64 --head-dim 64 --dtype bf16 [--check]

Must run without TRITON_INTERPRET=1 (the interpreter replaces the compiler).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import triton_chunked as tc
from .rounds import default_round_configs

KERNELS = {
    "fwd": (tc._fwd_kernel, dict(STATS=True)),
    "dkdv": (tc._dkdv_kernel, dict(HAS_DLSE=True)),
    "dq": (tc._dq_kernel, dict(HAS_DLSE=True)),
}
TYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
BLOCKS = ("Q", "K", "V", "OUT", "DOUT", "DQ", "DK", "DV")  # (G, L, d) tensors in the input dtype


def _cuobjdump(*args: str) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout


def _constants(
    chunk_size: int,
    head_dim: int,
    dtype: torch.dtype,
    config: tc.TileConfig,
    causal: bool,
    has_valid: bool,
    has_buckets: bool,
    extra: dict,
) -> dict:
    """The constexpr arguments the launchers give every kernel, plus the kernel's own."""
    return dict(
        C=chunk_size,
        D=head_dim,
        TILE=config.tile,
        STEP=config.step,
        STEPS=tc._window_steps(chunk_size, config),
        NEED_VIS=tc._needs_visibility(chunk_size, config),
        CAUSAL=causal,
        HAS_VALID=has_valid,
        HAS_BUCKETS=has_buckets,
        UPCAST=False,
        FP32_ACCURATE=dtype == torch.float32,
        **extra,
    )


def kernel_resources(
    name: str,
    chunk_size: int,
    head_dim: int,
    dtype: torch.dtype,
    config: tc.TileConfig,
    *,
    causal: bool = True,
    has_valid: bool = True,
    has_buckets: bool = False,
    arch: int = 90,
) -> dict:
    """{'regs', 'stack', 'shared', 'hgmma', 'hmma'} of kernel `name` ('fwd', 'dkdv', 'dq') for sm_<arch>."""
    fn, extra = KERNELS[name]
    consts = _constants(chunk_size, head_dim, dtype, config, causal, has_valid, has_buckets, extra)
    pointer = {n: f"*{TYPE_NAMES[dtype]}" for n in BLOCKS} | {
        "POS": "*i32",
        "BKT": "*i32",
        "VALID": "*u8",
    }
    scalar = {"L": "i32", "scale": "fp32"}
    signature = {
        n: "constexpr" if n in consts else scalar.get(n) or pointer.get(n, "*fp32")
        for n in fn.arg_names
    }
    # What the launcher's specialisation assumes: pointers and L divisible by 16.
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if n not in consts and n != "scale"
    }
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs=consts, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=config.num_warps, num_stages=config.num_stages),
    )
    return _cubin_resources(compiled)


ROUND_KERNELS = {
    "round_fwd": ("_round_fwd_kernel", "fwd", dict(STATS=True, FIRST=False, LAST=False)),
    "round_dkdv": ("_round_dkdv_kernel", "dkdv", dict(FIRST=False, LAST=False)),
    "round_dq": ("_round_dq_kernel", "dq", dict(FIRST=False, LAST=False)),
}
ROUND_BLOCKS = (
    "Q",
    "K",
    "V",
    "X",
    "OUT",
    "DOUT",
    "DQ",
    "DK",
    "DV",
    "DX",
)  # input dtype, any strides


def round_kernel_resources(
    name: str,
    chunk_size: int,
    head_dim: int,
    dtype: torch.dtype,
    config: tc.TileConfig,
    *,
    causal: bool = True,
    has_valid: bool = True,
    has_buckets: bool = False,
    arch: int = 90,
) -> dict:
    """`kernel_resources` for the fused round kernels ('round_fwd', 'round_dkdv', 'round_dq'),
    specialised as the model launches them: int64 order, innermost strides 1 and the others
    multiples of 16, as for q, k, v in (B, L, H, d) memory."""
    from . import triton_rounds as tr

    fn_name, _, extra = ROUND_KERNELS[name]
    consts = _constants(chunk_size, head_dim, dtype, config, causal, has_valid, has_buckets, extra)
    return _round_resources(getattr(tr, fn_name), consts, dtype, config, arch)


def round_backward_resources(
    chunk_size: int,
    head_dim: int,
    dtype: torch.dtype,
    config: tc.RunConfig,
    *,
    causal: bool = True,
    has_valid: bool = True,
    has_buckets: bool = False,
    arch: int = 90,
) -> dict:
    """`round_kernel_resources` for the one-launch shared-QK round backward
    (`triton_round_backward`) at launch shape `config`."""
    from . import triton_round_backward as trb

    consts = dict(
        C=chunk_size, D=head_dim, SPAN=config.span, CAUSAL=causal, HAS_VALID=has_valid,
        HAS_BUCKETS=has_buckets, FIRST=False, LAST=False, UPCAST=False,
        FP32_ACCURATE=dtype == torch.float32,
    )  # fmt: skip
    return _round_resources(trb._round_bwd_kernel, consts, dtype, config, arch)


def _round_resources(fn, consts: dict, dtype: torch.dtype, config, arch: int) -> dict:
    """Compiles a round kernel with `consts`, its other arguments typed as the launchers pass
    them (upper-case names: pointers, input-dtype rows for ROUND_BLOCKS, int64 order)."""
    consts = consts | {n: 1 for n in fn.arg_names if n.endswith("_sd")}  # triton specialises 1s
    pointer = {n: f"*{TYPE_NAMES[dtype]}" for n in ROUND_BLOCKS} | {
        "ORDER": "*i64",
        "BKT": "*i64",
        "VALID": "*u8",
    }
    signature = {}
    for n in fn.arg_names:
        if n in consts:
            signature[n] = "constexpr"
        elif n == "scale":
            signature[n] = "fp32"
        elif (n.isupper() or n == "B_") and n not in ("H", "R", "L"):
            signature[n] = pointer.get(n, "*fp32")
        else:
            signature[n] = "i32"
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if n not in consts and n not in ("scale", "r", "H", "R")
    }
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs=consts, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=config.num_warps, num_stages=config.num_stages),
    )
    return _cubin_resources(compiled)


def hash_kernel_resources(
    head_dim: int, factors: tuple[int, ...], arch: int = 90, bf16_dot: bool = True
) -> dict:
    """`kernel_resources` of the fused hashing kernel (triton_hashing) for q in bf16 with
    head dim `head_dim` and bucket `factors`, at its launch shape: the model's bf16 rotations
    (one bf16 MMA a product) or, `bf16_dot=False`, fp32 ones (tf32x3); 4 hash rounds."""
    from . import triton_hashing as th

    halves = [f // 2 for f in factors] + [0] * (th.MAX_FACTORS - len(factors))
    consts = dict(D=head_dim, R=4, HAS_VALID=True, BF16_DOT=bf16_dot, BLOCK=th.BLOCK_L, x_sd=1)
    for i, half in enumerate(halves, start=1):
        consts[f"HALF{i}"] = half
        consts[f"PAD{i}"] = th.padded_half(half)
    types = {"X": "*bf16", "VALID": "*u8", "BUCKETS": "*i32"}
    rot_type = "*bf16" if bf16_dot else "*fp32"
    signature = {
        n: "constexpr" if n in consts else types.get(n, rot_type if n.startswith("ROT") else "i32")
        for n in th._hash_kernel.arg_names
    }
    compiled = triton.compile(
        ASTSource(th._hash_kernel, signature, constexprs=consts),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=th.NUM_WARPS),
    )
    return _cubin_resources(compiled)


def layer_norm_kernel_resources(part_width: int, two: bool, arch: int = 90) -> dict:
    """`kernel_resources` of the fused LayerNorm kernels (fp32 rows in, bf16 out): a dict
    {'fwd': ..., 'bwd': ...} at their launch shapes for parts of `part_width` features."""
    from . import triton_layer_norm as tln

    block_m, block_p, warps = tln._shape(part_width, 2 if two else 1)
    types = {"Y": "*bf16", "G": "*bf16", "eps": "fp32", "n_rows": "i32", "L": "i32"}
    types |= {"P": "i32", "D": "i32"}
    shape = dict(TWO=two, BLOCK_M=block_m, BLOCK_P=block_p)
    return {
        "fwd": _elementwise_resources(tln._ln_fwd_kernel, shape, types, "*fp32", warps, arch),
        "bwd": _elementwise_resources(
            tln._ln_bwd_kernel, shape | dict(STEPS=4, ACCUMULATE=True), types, "*fp32", warps, arch
        ),
    }


def bias_gelu_kernel_resources(features: int, arch: int = 90) -> dict:
    """`kernel_resources` of the bias + GELU kernels (bf16 activations): a dict
    {'fwd': ..., 'bwd': ...} at their launch shapes for rows of `features`."""
    from . import triton_bias_gelu as tbg

    block_m, block_f, fwd_warps = tbg._shape(features)
    bwd = tbg.backward_shape(features)
    types = {"B": "*fp32", "DB_PART": "*fp32"}
    fwd_shape = dict(BLOCK_M=block_m, BLOCK_F=block_f)
    bwd_shape = dict(STEPS=bwd.steps, BLOCK_M=bwd.block_m, BLOCK_F=bwd.block_f)
    return {
        "fwd": _elementwise_resources(
            tbg._bias_gelu_fwd_kernel, fwd_shape, types, "*bf16", fwd_warps, arch
        ),
        "bwd": _elementwise_resources(
            tbg._bias_gelu_bwd_kernel, bwd_shape, types, "*bf16", bwd.num_warps, arch
        ),
    }


def _elementwise_resources(
    fn, consts: dict, types: dict, pointer: str, warps: int, arch: int
) -> dict:
    """`_cubin_resources` of `fn` compiled for sm_`arch`: `consts` as constexprs, arguments
    typed by `types`, else i32 for lower-case names and `pointer` for upper-case ones."""
    signature = {
        n: "constexpr" if n in consts else types.get(n, "i32" if n.islower() else pointer)
        for n in fn.arg_names
    }
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs=consts),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=warps),
    )
    return _cubin_resources(compiled)


def _cubin_resources(compiled) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = re.search(r"REG:(\d+) STACK:(\d+)", _cuobjdump("--dump-resource-usage", cubin))
        sass = _cuobjdump("--dump-sass", cubin)
    return dict(
        regs=int(usage.group(1)),
        stack=int(usage.group(2)),
        shared=compiled.metadata.shared,
        hgmma=sass.count("HGMMA"),
        hmma=sass.count("HMMA"),  # mma.sync: what fewer than 4 warps (no warpgroup) get
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=list(TYPE_NAMES.values()), default="bf16")
    parser.add_argument("--check", action="store_true", help="exit 1 on spills or no MMA")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter cannot compile")
    dtype = {v: k for k, v in TYPE_NAMES.items()}[args.dtype]
    configs = tc.default_configs(args.chunk, args.head_dim, dtype)
    round_configs = default_round_configs(args.chunk, args.head_dim, dtype)
    bad = 0
    for name in KERNELS:
        config = getattr(configs, name)
        r = kernel_resources(name, args.chunk, args.head_dim, dtype, config)
        bad += r["stack"] > 0 or r["hgmma"] + r["hmma"] == 0
        print(f"{name:4s} C={args.chunk} d={args.head_dim} {args.dtype} {config}: {r}")
    for name, (_, part, _) in ROUND_KERNELS.items():
        config = getattr(round_configs, part)
        r = round_kernel_resources(name, args.chunk, args.head_dim, dtype, config)
        bad += r["stack"] > 0 or r["hgmma"] + r["hmma"] == 0
        print(f"{name:10s} C={args.chunk} d={args.head_dim} {args.dtype} {config}: {r}")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
