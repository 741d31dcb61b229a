"""The Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020), torch only.

from reformer_lab.model import ReformerConfig, ReformerLM
model = ReformerLM(ReformerConfig(dim=512, depth=6, heads=8, max_seq_len=65536))
logits = model(tokens)                       # (B, N) -> (B, N, vocab)
out = model.loss(tokens, targets)            # memory-lean: never the whole logits
"""

from .config import ConfigError, ReformerConfig
from .lm import LMLoss, ReformerLM

__all__ = ["ConfigError", "LMLoss", "ReformerConfig", "ReformerLM"]
