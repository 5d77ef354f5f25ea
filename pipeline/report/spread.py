"""The spread of a column over every shard, in memory that does not grow with the folder.

The report draws a histogram of tokens and latency and gives latency quantiles. Held as
8-byte values, the ok rows' three columns were 240 MB at 10M rows and 2.4 GB at 100M.
Here a first pass over the shards finds each column's range, and a second counts the
values into the histogram's 30 bins (the same bins as `np.histogram(values, bins=30)`)
and into 65,536 fine bins, spaced evenly in the logarithm when every value is positive,
from which the quantiles are read: within 0.02% of the exact value for positive values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.output.books import read_shard

BINS = 30
_FINE = 1 << 16


@dataclass
class Spread:
    """One column's values, added a shard at a time: `see` in the first pass over the
    shards, `count` in the second."""

    low: float = np.inf
    high: float = -np.inf
    n: int = 0
    _edges: np.ndarray | None = None
    _fine_edges: np.ndarray | None = None
    _counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))
    _fine: np.ndarray = field(default_factory=lambda: np.zeros(_FINE, dtype=np.int64))

    def see(self, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        if len(values):
            self.low = min(self.low, float(values.min()))
            self.high = max(self.high, float(values.max()))
            self.n += len(values)

    def count(self, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        if not len(values):
            return
        if self._edges is None:
            self._edges = np.histogram_bin_edges(np.array([self.low, self.high]), bins=BINS)
            if self.low > 0 and self.high > self.low:
                self._fine_edges = np.geomspace(self.low, self.high, _FINE + 1)
            elif self.high > self.low:
                self._fine_edges = np.linspace(self.low, self.high, _FINE + 1)
        self._counts += np.histogram(values, bins=self._edges)[0]
        if self._fine_edges is not None:  # (one value throughout: it is every quantile)
            self._fine += np.histogram(values, bins=self._fine_edges)[0]

    def histogram(self) -> tuple[list[int], list[float]]:
        """(counts, edges) of the 30 bins."""
        assert self._edges is not None
        return self._counts.tolist(), self._edges.round(3).tolist()

    def quantiles(self, qs: list[float]) -> list[float]:
        """Each quantile (as `np.quantile`'s linear one), read from the fine bins."""
        if self.low == self.high:
            return [self.low] * len(qs)
        assert self._fine_edges is not None
        before = np.concatenate([[0], np.cumsum(self._fine)])
        found = []
        for q in qs:
            rank = q * (self.n - 1)  # 0-based position among the sorted values
            b = int(np.searchsorted(before, rank, side="right")) - 1
            b = min(max(b, 0), _FINE - 1)
            inside = (rank - before[b] + 0.5) / max(self._fine[b], 1)  # where in the bin
            left, right = self._fine_edges[b], self._fine_edges[b + 1]
            found.append(float(left + (right - left) * min(max(inside, 0.0), 1.0)))
        return found


def spreads_of(
    shards: list[Path], names: tuple[str, ...]
) -> tuple[dict[str, Spread], dict[str, int], int]:
    """The spread of each of `names` over the ok rows of every shard, in two passes a
    shard at a time; with every row's attempts counted, and the ok rows."""
    spreads = {name: Spread() for name in names}
    attempts: dict[str, int] = {}
    ok_rows = 0
    for ok in _ok_rows(shards, names, attempts):
        ok_rows += ok.num_rows
        for name in names:
            spreads[name].see(_floats(ok[name]))
    if ok_rows:
        for ok in _ok_rows(shards, names, None):
            for name in names:
                spreads[name].count(_floats(ok[name]))
    return spreads, attempts, ok_rows


def _ok_rows(
    shards: list[Path], names: tuple[str, ...], attempts: dict[str, int] | None
) -> Iterator[pa.Table]:
    """Each shard's ok rows' `names`; every row's attempts counted into `attempts`."""
    for shard in shards:
        table = read_shard(shard, columns=["status", "attempts", *names])
        if attempts is not None:
            for v in pc.value_counts(table["attempts"]).to_pylist():
                attempts[str(v["values"])] = attempts.get(str(v["values"]), 0) + v["counts"]
        yield table.filter(pc.equal(table["status"], "ok"))


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False).astype(float)  # a null: NaN
