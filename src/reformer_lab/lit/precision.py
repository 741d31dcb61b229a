"""The training precision Lightning should use when the config says `precision: auto`."""

from __future__ import annotations

import torch


def default_precision() -> str:
    """bf16-mixed where the GPU supports bfloat16, 16-mixed on older GPUs, full fp32 on CPU.

    bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 gets a GradScaler
    from Lightning's 16-mixed plugin. CPU autocast brings little speed, so fp32 there.
    """
    if not torch.cuda.is_available():
        return "32-true"
    if torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed"


def resolve_precision(precision: str | int | None) -> str | int:
    """`auto` / None -> `default_precision()`; anything else is passed to Lightning unchanged."""
    if precision is None or precision == "auto":
        return default_precision()
    return precision
