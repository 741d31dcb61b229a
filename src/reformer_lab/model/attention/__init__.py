"""Attention layers: LSH (sec 2), local and full, behind one interface."""

from .backend import chunked_attention
from .chunked import MASK_SCORE, SELF_SCORE, chunked_attention_torch
from .full import FullAttentionCore
from .local import LocalAttentionCore
from .lsh import LSHAttentionCore
from .self_attention import SelfAttention

__all__ = [
    "MASK_SCORE",
    "SELF_SCORE",
    "FullAttentionCore",
    "LSHAttentionCore",
    "LocalAttentionCore",
    "SelfAttention",
    "chunked_attention",
    "chunked_attention_torch",
]
