"""Fused GPU kernels (Triton). Importable without triton or CUDA: kernels load on first use."""

from .api import (
    SUPPORTED_CHUNK_SIZES,
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    chunked_attention_triton,
    interpreting,
    triton_available,
)
from .rounds import check_rounds_inputs, lsh_rounds_backward, lsh_rounds_forward

__all__ = [
    "SUPPORTED_CHUNK_SIZES",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "check_rounds_inputs",
    "chunked_attention_triton",
    "interpreting",
    "lsh_rounds_backward",
    "lsh_rounds_forward",
    "triton_available",
]
