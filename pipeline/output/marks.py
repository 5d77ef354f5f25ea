"""Which of the manifest's rows the folder already holds, as bits by row.

A run, `caption status` and the manifest guard all ask the same of every manifest row:
is its id answered ok, answered with an error, or not at all? And which done ids has the
manifest no row for (removed sources)? The answer comes from one join of the folder's
done ids (`books.scan`) with the manifest's ids, a partition at a time
(`io/idparts.py`), into a bit per manifest row (`io/rowbits.py`). Past that, every
question is a count or a bit test by row position: no lookup of a hundred million ids is
held while the run sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.io.arrow import parquet_batches
from pipeline.io.idparts import IdParts, paired
from pipeline.io.rowbits import RowBits
from pipeline.records import MANIFEST_ID

OK, ERROR = 1, 2  # a done id's payload in `Done.ids`


@dataclass(slots=True)
class Marks:
    """Per manifest row: done ok, done with an error."""

    ok: RowBits
    error: RowBits
    removed: int  # done ids the manifest holds no row for

    @property
    def rows(self) -> int:
        return self.ok.rows

    def done(self) -> RowBits:
        """Rows with a result, ok or error."""
        return self.ok | self.error

    @property
    def pending(self) -> int:
        """Rows without a result."""
        return self.rows - self.done().count()


def manifest_parts(manifest: Path) -> IdParts:
    """A manifest's ids, each with its row number, a million at a time."""
    parts = IdParts(np.int64)
    for start, batch in parquet_batches(manifest, [MANIFEST_ID], 1 << 20):
        parts.add(batch.column(0), np.arange(start, start + batch.num_rows, dtype=np.int64))
    return parts


def mark(manifest: Path, done_ids: IdParts) -> Marks:
    """The manifest's rows marked with what `done_ids` (payload `OK` or `ERROR`) holds.
    Ids are unique on both sides (the manifest drops duplicates; compaction keeps one
    current row per id)."""
    rows = pq.ParquetFile(manifest).metadata.num_rows
    ok, error = RowBits(rows), RowBits(rows)
    if not len(done_ids):
        return Marks(ok, error, 0)
    found = 0
    own = manifest_parts(manifest)
    try:
        for done, mine in paired(done_ids, own):
            at = done.positions(mine)
            hit = at >= 0
            status, where = done.payload[at[hit]], mine.payload[hit]
            ok.set(where[status == OK])
            error.set(where[status == ERROR])
            found += int(hit.sum())
    finally:
        own.close()
    return Marks(ok, error, len(done_ids) - found)
