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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.arrow import combined, parquet_batches
from pipeline.io.idparts import IdParts, paired
from pipeline.io.rowbits import RowBits
from pipeline.io.rowgroups import RowGroups
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


def ids_at(manifest: Path, rows: np.ndarray) -> pa.Array:
    """The ids of the manifest's rows at `rows`, read by row group (`io/rowgroups.py`)."""
    return combined(RowGroups(str(manifest), [MANIFEST_ID]).take(rows)[MANIFEST_ID])


_RANGE = 1 << 20  # result rows put back in order at a time


def shard_rows(manifest: Path, shard_ids: Iterable[pa.Array]) -> Iterator[np.ndarray]:
    """For each shard's ids in turn, the manifest row of each (-1: not in the manifest,
    a removed row). One join of the shards' ids with the manifest's, a partition at a
    time; the answers are put back in shard order a range of rows at a time, so memory
    holds a partition or a range, never the folder."""
    results, start = IdParts(np.int64), 0
    sizes: list[int] = []
    for ids in shard_ids:
        results.add(ids, np.arange(start, start + len(ids), dtype=np.int64))
        sizes.append(len(ids))
        start += len(ids)
    own = manifest_parts(manifest)
    answers = IdParts(np.int64, ranges=_RANGE)  # result row -> manifest row
    for mine, theirs in paired(own, results):
        at = mine.positions(theirs)
        hit = at >= 0
        answers.add_numbers(theirs.payload[hit], mine.payload[at[hit]])
    own.close()
    results.close()
    yield from _cut(_in_order(answers, start), sizes)
    answers.close()


def _in_order(answers: IdParts, rows: int) -> Iterator[np.ndarray]:
    """Manifest rows in result-row order, a range at a time (-1 where none)."""
    start = 0
    for part in answers.parts():
        if part.numbers is None:
            continue  # the strings' partition: row numbers are never strings
        stop = rows if not answers.spilled else min(rows, start + answers.ranges)
        found = np.full(stop - start, -1, dtype=np.int64)
        found[part.numbers.astype(np.int64) - start] = part.payload
        yield found
        start = stop
    if start < rows:  # trailing rows with no answer, in no partition
        yield np.full(rows - start, -1, dtype=np.int64)


def _cut(ranges: Iterator[np.ndarray], sizes: list[int]) -> Iterator[np.ndarray]:
    """Consecutive arrays cut into pieces of `sizes`."""
    held = np.empty(0, dtype=np.int64)
    for size in sizes:
        while len(held) < size:
            held = np.concatenate([held, next(ranges)])
        yield held[:size]
        held = held[size:]
