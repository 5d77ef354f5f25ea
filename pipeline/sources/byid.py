"""Rows of source batches by id: those an output folder holds left out, or only some.

For rows that are not the folder's own manifest (an estimate's sources); a run marks its
manifest's rows by position instead (`output/marks.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa

from pipeline.io.arrow import bool_array
from pipeline.io.idlookup import IdLookup
from pipeline.records import MANIFEST_ID


def without_done(
    batches: Iterable[pa.RecordBatch], skip: pa.Array | IdLookup | None
) -> Iterator[pa.RecordBatch]:
    """Leave out the rows whose id is in `skip` (rows an output folder already holds).
    The lookup is built once (or given built), not per batch: that was quadratic in the
    folder's size."""
    if skip is None or not len(skip):
        yield from batches
        return
    yield from _by_id(batches, skip, keep=False)


def only_ids(batches: Iterable[pa.RecordBatch], ids: pa.Array) -> Iterator[pa.RecordBatch]:
    """Only the rows whose id is in `ids`."""
    if len(ids):
        yield from (batch for batch in _by_id(batches, ids, keep=True) if batch.num_rows)


def _by_id(
    batches: Iterable[pa.RecordBatch], ids: pa.Array | IdLookup, keep: bool
) -> Iterator[pa.RecordBatch]:
    """The rows whose id is in `ids` (`keep`) or not, one lookup for every batch."""
    lookup = ids if isinstance(ids, IdLookup) else IdLookup(ids)
    for batch in batches:
        yield batch.filter(bool_array(lookup.contains(batch.column(MANIFEST_ID)) == keep))
