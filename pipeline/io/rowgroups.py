"""Rows of a Parquet file by position, reading only the row groups that hold them.

Export puts the manifest's own columns beside each shard's rows. Read whole, a 100M-row
manifest's columns would not fit; each shard's rows come (mostly) from a run of
neighbouring manifest rows, so reading just their row groups, with the last few kept,
reads the manifest about once.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.arrow import take_indices

_KEPT = 4  # row groups kept after reading: a shard straddles two or three


class RowGroups:
    """Some columns of a Parquet file, taken by row position."""

    def __init__(self, path: str, columns: list[str]) -> None:
        self._file = pq.ParquetFile(path)
        self.columns = columns
        sizes = [
            self._file.metadata.row_group(g).num_rows for g in range(self._file.num_row_groups)
        ]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._kept: OrderedDict[int, pa.Table] = OrderedDict()

    def _group(self, g: int) -> pa.Table:
        if g in self._kept:
            self._kept.move_to_end(g)
        else:
            self._kept[g] = self._file.read_row_group(g, columns=self.columns)
            if len(self._kept) > _KEPT:
                self._kept.popitem(last=False)
        return self._kept[g]

    def take(self, positions: np.ndarray) -> pa.Table:
        """The rows at `positions`, in that order; a row of nulls where a position is -1."""
        schema = self._file.schema_arrow
        found = positions >= 0
        groups = np.searchsorted(self._starts, positions[found], side="right") - 1
        pieces, where = [], np.full(len(positions), -1, dtype=np.int64)
        taken = 0
        for g in np.unique(groups):
            mine = np.flatnonzero(found)[groups == g]
            local = positions[mine] - self._starts[g]
            pieces.append(self._group(int(g)).take(take_indices(local)))
            where[mine] = np.arange(taken, taken + len(mine))
            taken += len(mine)
        if not pieces:
            empty = pa.schema([schema.field(c) for c in self.columns]).empty_table()
            return empty.take(take_indices(where))
        return pa.concat_tables(pieces).take(take_indices(where))
