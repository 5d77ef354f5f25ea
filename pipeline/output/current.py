"""What the folder's current manifest says of the rows already answered.

- **Removed**: the row's source left the manifest (a nightly rerun's sources no longer
  hold the file). Not deleted (it was paid for, and its cost stays counted): `caption
  status` counts it apart, `caption export` and `read_results` leave it out unless asked.
  Known by reading, not stored: a row is removed while its id is not in the manifest,
  and current again if its source comes back.
- **Changed**: a local file replaced at the same path (same path id) since the manifest
  before: its size or modification time differs (`records.SIGNATURE`, read from the
  inode at ingest, so an unchanged folder is never read). The run sends it again; the
  new answer becomes the row, and the old one moves to the superseded-attempts ledger
  with its cost (`books.compact`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.arrow import bool_array, parquet_batches, string_array
from pipeline.io.idlookup import IdLookup, text_hash64
from pipeline.io.idparts import IdParts, paired
from pipeline.io.rowbits import RowBits
from pipeline.output.folder import OutputDir
from pipeline.output.marks import ids_at
from pipeline.records import MANIFEST_ID, MANIFEST_SOURCE, SIGNATURE
from pipeline.sources.ids import content_id

log = logging.getLogger(__name__)

SHA256 = "source_sha256"


_SIGNED = np.dtype([("row", np.int64), ("signature", np.uint64)])


def signatures(manifest: Path) -> IdParts | None:
    """Each id of a manifest with its row and a hash of its file's signature (0: none),
    by partition (`io/idparts.py`); None if it has no signatures (an older manifest)."""
    if not manifest.exists() or SIGNATURE not in pq.read_schema(manifest).names:
        return None
    parts = IdParts(_SIGNED)
    for start, batch in parquet_batches(manifest, [MANIFEST_ID, SIGNATURE], 1 << 20):
        signed = np.empty(batch.num_rows, dtype=_SIGNED)
        signed["row"] = np.arange(start, start + batch.num_rows)
        signed["signature"] = text_hash64(batch.column(1))
        parts.add(batch.column(0), signed)
    return parts


def changed_rows(
    before: IdParts | None, out: OutputDir, done: RowBits
) -> tuple[pa.Array, np.ndarray]:
    """The ids, and manifest rows, of done rows (`done`, by manifest row) whose file's
    signature differs from the manifest before's (`before`, from `signatures`), and
    whose bytes differ from those the answer was made from (a file only touched is the
    same). The two manifests are compared a partition at a time."""
    none = pa.nulls(0, pa.string()), np.empty(0, dtype=np.int64)
    after = signatures(out.manifest)
    if before is None or after is None or not done.count():
        return none
    found = []
    for old, new in paired(before, after):
        at = old.positions(new)
        hit = at >= 0
        was, now = old.payload["signature"][at[hit]], new.payload["signature"][hit]
        # No signature on either side (bucket objects, URLs): not a change.
        found.append(new.payload["row"][hit][(was != 0) & (now != 0) & (was != now)])
    before.close()
    after.close()
    rows = np.sort(np.concatenate(found))
    rows = rows[done.get(rows)]
    if not len(rows):
        return none  # the common night
    ids = ids_at(out.manifest, rows)
    changed = _new_bytes(out, ids)
    keep = IdLookup(changed).contains(ids) if len(changed) else np.zeros(len(rows), bool)
    return changed, rows[keep]


def _new_bytes(out: OutputDir, candidates: pa.Array) -> pa.Array:
    """Those of `candidates` whose file now reads differently from the bytes their answer
    was made from (`source_sha256`; a row without one counts as changed). Only these
    files are read."""
    from pipeline.output.books import read_shard

    wanted = IdLookup(candidates)
    sent: dict[str, str | None] = {}
    for shard in out.shards():
        table = read_shard(shard, columns=[MANIFEST_ID, SHA256])
        table = table.filter(bool_array(wanted.contains(table[MANIFEST_ID])))
        sent.update(zip(table[MANIFEST_ID].to_pylist(), table[SHA256].to_pylist(), strict=True))
    ids: list[str] = []
    sources: list[str] = []
    # A batch at a time: only the candidates kept.
    for _, batch in parquet_batches(out.manifest, [MANIFEST_ID, MANIFEST_SOURCE], 1 << 20):
        rows = batch.filter(bool_array(wanted.contains(batch.column(0))))
        ids += rows.column(0).to_pylist()
        sources += rows.column(1).to_pylist()
    with ThreadPoolExecutor(8) as pool:  # hashing releases the GIL
        now = list(pool.map(content_id, sources))
    changed = [i for i, digest in zip(ids, now, strict=True) if not digest or sent.get(i) != digest]
    if len(changed) < len(ids):
        log.info(
            "%d file(s) with a new modification time but the same bytes: not sent again",
            len(ids) - len(changed),
        )
    return string_array(changed)
