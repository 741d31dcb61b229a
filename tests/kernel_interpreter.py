"""Import this first in a Triton kernel test file: it runs the kernels on CUDA when there is a
GPU, else under Triton's CPU interpreter.

The interpreter must be switched on (TRITON_INTERPRET=1) before triton is first imported: its
own library functions (tl.sum, tl.max) are decorated then. When something imported triton
earlier in this process (Lightning does), `READY` is False, the file's `in_process` tests
skip, and its `test_in_fresh_process` reruns the file in a new process (interpreter_rerun.py).
Without triton installed, importing this skips the whole test file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)

import triton.language.standard  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

READY = ON_GPU or isinstance(triton.language.standard.sum, InterpretedFunction)
DEVICE = "cuda" if ON_GPU else "cpu"
in_process = pytest.mark.skipif(
    not READY, reason="triton was imported before the interpreter was on: see test_in_fresh_process"
)


def interpreted(module: ModuleType, kernel: str) -> ModuleType:
    """`module` with its kernels interpreted: reloaded when it was imported while the
    interpreter was off (its `kernel` then is a compiled JITFunction)."""
    if READY and not ON_GPU and not isinstance(getattr(module, kernel), InterpretedFunction):
        return importlib.reload(module)
    return module
