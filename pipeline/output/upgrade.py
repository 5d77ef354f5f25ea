"""Folders written by older versions, brought up to today's on the next run (under the
lock). Read-only commands read them as they are.

- (`OutputDir.migrate`: `manifest.parquet` and `run.json` beside the shards move into
  `.caption/`.)
- `unify_shards`: shards that carried the sources' own columns get the result schema.
- `rehash_ids`: ids hashed from the path as the user named it (version 1) become ids of
  the real path (`sources/ids.py`), in the shards and the manifest, so the rerun that follows
  matches them. A row is rehashed only when its old id is proven to be the hash of a
  spelling of its source, so user ids (`--id-column`) and URLs stay as they are.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import storage_error
from pipeline.io.arrow import combined, read_parquet
from pipeline.output.writer import write_parquet_atomic
from pipeline.records import MANIFEST_ID, MANIFEST_SOURCE, to_schema
from pipeline.sources.ids import ID_VERSION, RealPaths, spelling_of, stable_id
from pipeline.sources.images import NOT_UTF8_PREFIX, is_url

if TYPE_CHECKING:
    from pipeline.output.folder import OutputDir

log = logging.getLogger(__name__)

_OUR_ID = re.compile(r"[0-9a-f]{16}")


def unify_shards(out: OutputDir) -> int:
    """Give shards of an older version the one schema: result columns only (the sources'
    own columns are in the manifest), newer columns as nulls. A shard whose rows the
    manifest does not hold keeps its columns, and a warning says so. Reads only each
    shard's footer unless it needs rewriting."""
    from pipeline.output.books import read_shard

    rewritten = 0
    manifest_ids: pa.Array | None = None
    target = out.result_schema()
    for shard in out.shards():
        try:
            schema = pq.read_schema(shard)
        except (pa.ArrowInvalid, OSError):
            continue  # named by the scan that follows
        if schema.equals(target):
            continue
        table = read_shard(shard)
        extras = [n for n in table.column_names if n not in target.names]
        if extras:
            if manifest_ids is None:
                manifest_ids = combined(
                    read_parquet(out.manifest, columns=[MANIFEST_ID])[MANIFEST_ID]
                )
            if not pc.all(pc.is_in(table[MANIFEST_ID], value_set=manifest_ids)).as_py():
                log.warning(
                    "%s keeps its columns %s: the manifest no longer holds all its rows",
                    shard.name,
                    ", ".join(extras),
                )
                continue
        write_parquet_atomic(to_schema(table, target), shard)
        rewritten += 1
    if rewritten:
        log.info("gave %d shard(s) of an older version the result schema", rewritten)
    return rewritten


def needs_rehash(meta: dict[str, Any] | None) -> bool:
    """Whether a folder's run.json predates ids of the real path."""
    return meta is not None and (meta.get("ids") or {}).get("version", 1) < ID_VERSION


def rehash_ids(out: OutputDir) -> int:
    """Version-1 path ids -> real-path ids in the shards, then the manifest. Each file is
    replaced whole (temporary name, rename), and a row already rehashed is left alone, so
    a run killed half-way is finished by the next. Returns the rows whose id changed."""
    from pipeline.output.books import read_shard

    if not out.manifest.exists():
        return 0
    manifest = read_parquet(out.manifest)
    old, new = _new_ids(manifest[MANIFEST_ID].to_pylist(), manifest[MANIFEST_SOURCE].to_pylist())
    if not old:
        return 0
    old_ids, new_ids = pa.array(old, pa.string()), pa.array(new, pa.string())

    def remap(column: pa.ChunkedArray) -> pa.Array:
        mapped = pc.take(new_ids, pc.index_in(column, value_set=old_ids))
        return pc.coalesce(mapped, combined(column))

    for shard in out.shards():
        table = read_shard(shard)
        if pc.any(pc.is_in(table[MANIFEST_ID], value_set=old_ids)).as_py():
            i = table.schema.get_field_index(MANIFEST_ID)
            table = table.set_column(i, table.schema.field(i), remap(table[MANIFEST_ID]))
            write_parquet_atomic(table, shard)
    i = manifest.schema.get_field_index(MANIFEST_ID)
    manifest = manifest.set_column(i, manifest.schema.field(i), remap(manifest[MANIFEST_ID]))
    # Two spellings of one file were two rows; they are one now (the first is kept).
    first = pc.equal(
        pa.array(range(manifest.num_rows)),
        pc.index_in(manifest[MANIFEST_ID], value_set=combined(manifest[MANIFEST_ID])),
    )
    manifest = manifest.filter(first)
    staged = out.staged_manifest()
    try:
        pq.write_table(manifest, staged)
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise storage_error(out.path, exc) from None
    out.adopt_manifest(staged)
    log.info("gave %d row(s) ids of their real path (ids version %d)", len(old), ID_VERSION)
    return len(old)


def _new_ids(ids: list[str], sources: list[str]) -> tuple[list[str], list[str]]:
    """(old, new) of every row whose version-1 id is proven and whose new id differs."""
    old: list[str] = []
    new: list[str] = []
    real = RealPaths()
    hint: tuple[int, int] | None = None
    for row_id, source in zip(ids, sources, strict=True):
        if is_url(source) or source.startswith(NOT_UTF8_PREFIX) or not _OUR_ID.fullmatch(row_id):
            continue
        spelling = spelling_of(source, row_id, hint)
        if spelling is None:
            continue
        hint = spelling
        rehashed = stable_id(real(source))
        if rehashed != row_id:
            old.append(row_id)
            new.append(rehashed)
    return old, new
