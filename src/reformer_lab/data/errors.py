"""The one error type of the data layer, and the argument checks that raise it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


class DataError(ValueError):
    """Bad data arguments, or a missing / corrupt / truncated data file.

    Raised before any training starts (in `__init__`, `prepare_data` or `setup`); the message
    says what to change, naming the Hydra key (e.g. `data.path=...`) where there is one.
    """


def require_int(name: str, value: object, minimum: int) -> int:
    """`value` as an int >= `minimum`, or a DataError naming `data.<name>`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"data.{name} must be an integer >= {minimum}, got {value!r}")
    return value


def require_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise DataError(f"data.{name} must be true or false, got {value!r}")
    return value


def require_path(name: str, value: object) -> Path:
    if not isinstance(value, (str, Path)) or str(value) == "":
        raise DataError(f"data.{name} must be a file or folder path, got {value!r}")
    return Path(value).expanduser()


def require_fractions(name: str, value: object, count: int) -> tuple[float, ...]:
    """`count` positive fractions summing to 1 (e.g. train/val/test = 0.9/0.05/0.05)."""
    is_sequence = isinstance(value, Sequence) and not isinstance(value, str)
    if not is_sequence or len(value) != count:
        raise DataError(
            f"data.{name} must list {count} fractions, e.g. [0.9, 0.05, 0.05]; got {value!r}"
        )
    fractions = tuple(value)
    if not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions):
        raise DataError(f"data.{name} must hold numbers, got {value!r}")
    if any(not 0.0 < f < 1.0 for f in fractions) or not math.isclose(
        sum(fractions), 1.0, abs_tol=1e-6
    ):
        raise DataError(
            f"data.{name}={list(fractions)} must be {count} fractions in (0, 1) that sum to 1, "
            f"e.g. [0.9, 0.05, 0.05]"
        )
    return tuple(float(f) for f in fractions)
