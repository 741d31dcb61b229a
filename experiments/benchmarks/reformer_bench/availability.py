"""Which implementations can run here: each peer is an optional import (the `bench` extra).

Checked with `importlib.util.find_spec`, which imports no torch, so the matrix process stays
light and never touches the GPU.
"""

from __future__ import annotations

import importlib.util

REQUIRED_MODULE: dict[str, str | None] = {
    "reformer-lab": "reformer_lab.model",
    "reformer-lab-graph": "reformer_lab.model",
    "reformer-lab-offload": "reformer_lab.model",
    "hf": "transformers",
    "lucidrains": "reformer_pytorch",
    "full": None,
    "full-ckpt": None,
}
"""The module each implementation imports."""

INSTALL_HINT = {
    "reformer-lab": "pip install -e . (from the repository root)",
    "reformer-lab-graph": "pip install -e . (from the repository root)",
    "reformer-lab-offload": "pip install -e . (from the repository root)",
    "hf": "pip install 'reformer-lab[bench]'",
    "lucidrains": "pip install 'reformer-lab[bench]'",
}


def missing_reason(impl: str) -> str | None:
    """Why `impl` cannot run here (its package is not importable), or None if it can."""
    module = REQUIRED_MODULE[impl]
    if module is None:
        return None
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package of `module` is missing
        found = False
    return None if found else f"{module} is not importable: {INSTALL_HINT[impl]}"
