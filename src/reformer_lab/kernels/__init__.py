"""Fused GPU kernels (Triton). Importable without triton or CUDA: kernels load on first use."""

from .api import (
    SUPPORTED_CHUNK_SIZES,
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    chunked_attention_triton,
    interpreting,
    triton_available,
)

__all__ = [
    "SUPPORTED_CHUNK_SIZES",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "chunked_attention_triton",
    "interpreting",
    "triton_available",
]
