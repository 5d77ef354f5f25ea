"""Each manifest row's perceptual hashes (`phash.py`), kept in the manifest beside its
file signature, so that a nightly rerun hashes only the files it has not seen.

A row keeps the hashes the manifest before gave it when its id is the same and its file
signature (`records.SIGNATURE`: size and modification time) is unchanged; only new and
changed files are read. Rows with no bytes to read at ingest (http(s) URLs) or that are
not images keep null hashes: they are sent as without dedupe.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.dedupe.phash import hash_sources
from pipeline.errors import storage_error
from pipeline.io.arrow import combined, read_parquet, take_indices
from pipeline.io.idlookup import IdLookup
from pipeline.io.storage import read_many
from pipeline.output.layout import TMP_SUFFIX
from pipeline.records import MANIFEST_ID, MANIFEST_SOURCE, NEAR_ACROSS, NEAR_DOWN, SIGNATURE
from pipeline.sources.images import is_url

log = logging.getLogger(__name__)

HASH_COLUMNS = (NEAR_ACROSS, NEAR_DOWN)
BATCH_ROWS = 65_536


def previous_hashes(manifest: Path) -> pa.Table | None:
    """(id, signature, hashes) of the manifest before a rerun replaces it, if it has any."""
    if not manifest.exists():
        return None
    names = pq.read_schema(manifest).names
    if not all(c in names for c in HASH_COLUMNS):
        return None
    wanted = [MANIFEST_ID, *([SIGNATURE] if SIGNATURE in names else []), *HASH_COLUMNS]
    return read_parquet(manifest, columns=wanted)


@dataclass(slots=True)
class Hashed:
    """What `hashed_batches` did: rows hashed now (the others' hashes were kept), and
    http(s) URL rows left unhashed."""

    now: int = 0
    urls: int = 0


def add_hashes(manifest: Path, before: pa.Table | None) -> int:
    """Give every row of `manifest` its hashes, kept from `before` where the file is the
    same, computed otherwise; the manifest is rewritten whole (temporary name, rename).
    Returns how many rows were hashed now."""
    pf = pq.ParquetFile(manifest)
    schema = pf.schema_arrow
    for name in HASH_COLUMNS:
        if name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
        schema = schema.append(pa.field(name, pa.uint64()))
    counted = Hashed()
    tmp = manifest.with_name(manifest.name + TMP_SUFFIX)  # `recover` removes a leftover
    try:
        with pq.ParquetWriter(tmp, schema) as out:
            for rb in hashed_batches(pf.iter_batches(batch_size=BATCH_ROWS), before, counted):
                out.write_table(pa.Table.from_batches([rb]).cast(schema))
        os.replace(tmp, manifest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(manifest, exc) from None
    if counted.urls:
        log.warning("--dedupe near: %d http(s) URL row(s) not hashed: each is sent", counted.urls)
    return counted.now


def hashed_batches(
    batches: Iterable[pa.RecordBatch], before: pa.Table | None, counted: Hashed | None = None
) -> Iterator[pa.RecordBatch]:
    """Manifest batches with their hash columns (last), kept from `before` where the file
    is the same, computed otherwise; `counted` adds up what was done."""
    lookup = IdLookup(before[MANIFEST_ID]) if before is not None else None
    counted = counted if counted is not None else Hashed()
    for rb in batches:
        across, down, now, urls = _batch_hashes(rb, before, lookup)
        counted.now += now
        counted.urls += urls
        names = [n for n in rb.schema.names if n not in HASH_COLUMNS]
        yield pa.RecordBatch.from_arrays(
            [*(rb.column(n) for n in names), across, down], names=[*names, *HASH_COLUMNS]
        )


def _batch_hashes(
    rb: pa.RecordBatch, before: pa.Table | None, lookup: IdLookup | None
) -> tuple[pa.Array, pa.Array, int, int]:
    """One batch's (across, down) hashes, how many were computed, how many were URLs."""
    n = rb.num_rows
    across = np.zeros(n, dtype=np.uint64)
    down = np.zeros(n, dtype=np.uint64)
    have = np.zeros(n, dtype=bool)
    if before is not None and lookup is not None:
        at = lookup.positions(rb.column(MANIFEST_ID))
        found = at >= 0
        same = found.copy()
        if SIGNATURE in before.column_names and SIGNATURE in rb.schema.names:
            old = combined(before[SIGNATURE]).cast(pa.string()).take(take_indices(at))
            new = rb.column(SIGNATURE).cast(pa.string())
            # Equal, or both unsigned (bucket objects): a null on one side only differs.
            equal = pc.fill_null(pc.equal(old, new), False)
            both_null = pc.and_(pc.is_null(old), pc.is_null(new))
            same &= np.asarray(pc.or_(equal, both_null).to_numpy(zero_copy_only=False))
        prior_a = combined(before[NEAR_ACROSS]).take(take_indices(at))
        prior_d = combined(before[NEAR_DOWN]).take(take_indices(at))
        known = same & ~np.asarray(prior_a.is_null().to_numpy(zero_copy_only=False))
        across[known] = prior_a.fill_null(0).to_numpy()[known]
        down[known] = prior_d.fill_null(0).to_numpy()[known]
        have |= known
    sources = rb.column(MANIFEST_SOURCE).to_pylist()
    todo = [i for i in np.flatnonzero(~have) if not is_url(sources[i])]
    urls = int((~have).sum()) - len(todo)
    hashes = hash_sources([sources[i] for i in todo], remote=_fetch)
    for i, found_hash in zip(todo, hashes, strict=True):
        if found_hash is not None:
            across[i], down[i] = found_hash
            have[i] = True
    nulls = None if have.all() else ~have
    return pa.array(across, mask=nulls), pa.array(down, mask=nulls), len(todo), urls


def _fetch(urls: list[str]) -> list[bytes | None]:
    fetched = read_many(urls)
    return [d if isinstance(d, bytes) else None for d in (fetched[u] for u in urls)]
