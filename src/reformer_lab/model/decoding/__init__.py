"""Cached incremental decoding for `ReformerLM`; the semantics are written in ../generation.py."""

from .decoder import IncrementalDecoder
from .sampling import filter_top_k, filter_top_p, next_token

__all__ = ["IncrementalDecoder", "filter_top_k", "filter_top_p", "next_token"]
