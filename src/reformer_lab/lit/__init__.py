"""The Lightning layer: `ReformerLitModule`, token-weighted metrics, callbacks, precision choice.

Knows the model (`reformer_lab.model`), never Hydra or W&B (those live in `reformer_lab.cli`).
"""

from reformer_lab.lit.metrics import METRICS, TokenMetrics
from reformer_lab.lit.module import ReformerLitModule
from reformer_lab.lit.precision import default_precision, resolve_precision

__all__ = ["METRICS", "ReformerLitModule", "TokenMetrics", "default_precision", "resolve_precision"]
