"""One bit per row of a table: which rows are marked, by position.

What a run needs of a manifest's rows (answered, errored, to skip) is a yes or no per row.
Held as bits, a hundred million rows take 12.5 MB; as a byte per row, 100 MB; as a set
of ids, gigabytes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

_ORDER: Literal["little"] = "little"  # bit i of byte k is row 8k + i


class RowBits:
    """A bit per row, `rows` rows, all clear to begin with."""

    __slots__ = ("packed", "rows")

    def __init__(self, rows: int, packed: np.ndarray | None = None) -> None:
        self.rows = rows
        self.packed = np.zeros((rows + 7) // 8, dtype=np.uint8) if packed is None else packed

    def set(self, positions: np.ndarray) -> None:
        if len(positions):
            positions = positions.astype(np.int64, copy=False)
            bits = np.left_shift(1, positions & 7).astype(np.uint8)
            np.bitwise_or.at(self.packed, positions >> 3, bits)

    def clear(self, positions: np.ndarray) -> None:
        if len(positions):
            positions = positions.astype(np.int64, copy=False)
            bits = ~np.left_shift(1, positions & 7).astype(np.uint8)
            np.bitwise_and.at(self.packed, positions >> 3, bits)

    def get(self, positions: np.ndarray) -> np.ndarray:
        """Whether each of `positions` is marked."""
        positions = positions.astype(np.int64, copy=False)
        return (self.packed[positions >> 3] >> (positions & 7).astype(np.uint8)) & 1 == 1

    def window(self, start: int, stop: int) -> np.ndarray:
        """Rows `start` to `stop` as booleans (a batch's worth)."""
        stop = min(stop, self.rows)
        if stop <= start:
            return np.zeros(0, dtype=bool)
        first, last = start >> 3, (stop + 7) >> 3
        bits = np.unpackbits(self.packed[first:last], bitorder=_ORDER)
        at = start - (first << 3)
        return bits[at : at + stop - start].astype(bool)

    def positions(self) -> np.ndarray:
        """The marked rows' positions, found a million rows at a time."""
        step = 1 << 20
        found = [np.flatnonzero(self.window(a, a + step)) + a for a in range(0, self.rows, step)]
        return np.concatenate(found) if found else np.empty(0, dtype=np.int64)

    def count(self) -> int:
        return int(np.bitwise_count(self.packed).sum(dtype=np.int64))

    def __or__(self, other: RowBits) -> RowBits:
        return RowBits(self.rows, self.packed | other.packed)

    def __and__(self, other: RowBits) -> RowBits:
        return RowBits(self.rows, self.packed & other.packed)

    def __invert__(self) -> RowBits:
        flipped = ~self.packed
        if self.rows & 7:  # the last byte's unused bits stay clear: `count` counts rows
            flipped[-1] &= np.uint8((1 << (self.rows & 7)) - 1)
        return RowBits(self.rows, flipped)

    def copy(self) -> RowBits:
        return RowBits(self.rows, self.packed.copy())
