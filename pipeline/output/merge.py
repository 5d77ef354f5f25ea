"""Small shards merged when a run ends, so that a folder a nightly job reruns into does
not grow one small shard per night forever: after every run the folder holds shards of
at least half `rows_per_shard` rows and at most one smaller. A shard a little under full
(compaction took a superseded row out of it) is left as it is: merging a 10M-row folder's
1,000 such shards after `--retry-errors` rewrote all of them, 18 s, for no fewer shards.

The merged shards are written complete under new numbers, then the small ones they hold
are removed. Killed between the two, the folder holds each of those rows twice, identical
(same id, same `finished_at`); they are counted once (`books.scan`) and the next run's
compaction drops the copies, so no row is paid for or lost.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import storage_error
from pipeline.output.books import read_shard
from pipeline.output.folder import OutputDir
from pipeline.output.writer import next_sequence, write_parquet_atomic

log = logging.getLogger(__name__)


def merge_small_shards(out: OutputDir, rows_per_shard: int) -> int:
    """Rewrite the shards under half `rows_per_shard` rows as full shards and one
    remainder. Streams: at most about two shards' worth of rows in memory. Returns the
    shards removed."""
    half = rows_per_shard / 2
    small = [s for s in out.shards() if pq.ParquetFile(s).metadata.num_rows < half]
    if len(small) < 2:
        return 0
    sequence = next_sequence(out.path)
    written: list[Path] = []
    pending: list[pa.Table] = []
    held = 0

    def flush(rows: int) -> None:
        nonlocal sequence, pending, held
        table = pa.concat_tables(pending, promote_options="permissive")
        target = out.path / f"part-{sequence:05d}.parquet"
        write_parquet_atomic(table.slice(0, rows), target)
        written.append(target)
        sequence += 1
        rest = table.slice(rows)
        pending, held = ([rest] if rest.num_rows else []), rest.num_rows

    for shard in small:
        table = read_shard(shard)
        pending.append(table)
        held += table.num_rows
        while held >= rows_per_shard:
            flush(rows_per_shard)
    if held:
        flush(held)
    for shard in small:  # only now: every row is in a new shard first
        try:
            shard.unlink()
        except OSError as exc:
            raise storage_error(shard, exc) from None
    log.info("merged %d small shards into %d", len(small), len(written))
    return len(small)
