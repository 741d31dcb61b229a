"""Rows taken a block at a time, so that fp32 temporaries of long inputs stay bounded."""

from __future__ import annotations

BLOCK_ELEMENTS = 1 << 22
"""Elements of one fp32 temporary (16 MiB): rows are taken in blocks of BLOCK_ELEMENTS // width."""


def row_blocks(n_rows: int, width: int) -> list[slice]:
    """Slices covering range(n_rows), each of BLOCK_ELEMENTS // width rows (at least one)."""
    step = max(1, BLOCK_ELEMENTS // width)
    return [slice(i, i + step) for i in range(0, n_rows, step)]
