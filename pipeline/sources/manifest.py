"""Manifest reader: image sources -> one Parquet manifest with stable ids.

A source is a folder (recursive), a glob, an http(s) URL, a single image, or a list file
(.txt, .csv, .tsv, .jsonl, .parquet), local or in a bucket: `sources/entries.py` turns each into
entries; this module gives each row its id, drops duplicates and writes the manifest.
Everything streams in batches: memory holds one batch and the 64-bit ids seen so far
(`sources/seen.py`: 8 bytes each), never the whole list.

Ids are made as `sources/ids.py` describes: from a file's real path (the default), its bytes
(`--id-from content`) or the user's own column (`--id-column`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UsageError, storage_error
from pipeline.io.arrow import bool_array, parquet_batches
from pipeline.io.rowbits import RowBits
from pipeline.io.storage import is_remote, open_binary, read_many, upload
from pipeline.records import (
    MANIFEST_ID,
    MANIFEST_SOURCE,
    OWN_PREFIX,
    RESULT_COLUMNS,
    ROW_PROMPT,
    SIGNATURE,
    ManifestRow,
    to_schema,
)
from pipeline.sources.entries import source_entries
from pipeline.sources.ids import PATH_IDS, RealPaths, RowSpec, content_ids, stable_id
from pipeline.sources.images import NOT_UTF8_PREFIX, is_url
from pipeline.sources.lists import BATCH_ROWS, record_batch
from pipeline.sources.seen import SeenIds
from pipeline.sources.walk import IMAGE_EXTENSIONS, Links

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestSummary:
    rows: int
    duplicates: int
    sources: int
    path: Path | str  # a bucket URL for a manifest written to a bucket
    links_skipped: int = 0

    def line(self) -> str:
        links = (
            f"; {self.links_skipped} link(s) skipped (loops, second ways to a file, broken)"
            if self.links_skipped
            else ""
        )
        return (
            f"ingested {self.rows} rows from {self.sources} source(s); "
            f"{self.duplicates} duplicate(s) dropped{links} -> {self.path}"
        )


@dataclass(slots=True)
class Counts:
    """What ingest dropped on the way, for its summary line."""

    duplicates: int = 0
    links: Links = field(default_factory=Links)


def _renamed(columns: dict[str, Any]) -> dict[str, Any]:
    """User columns may not shadow ours: `id` becomes `input_id`, `source` `input_source`,
    `status` `input_status`..."""
    return {(f"input_{k}" if k in RESULT_COLUMNS else k): v for k, v in columns.items()}


def _not_utf8(path: str) -> str:
    """A file name that is not UTF-8 reaches Python with surrogate escapes, which the
    manifest's UTF-8 text cannot hold. It is kept as a percent-encoded `file:` URI: the
    row exists, with its bytes visible, and the run makes it an error row."""
    return NOT_UTF8_PREFIX + quote_from_bytes(os.fsencode(os.path.abspath(path)))


def iter_manifest_rows(
    sources: Iterable[str], spec: RowSpec = PATH_IDS, counts: Counts | None = None
) -> Iterator[list[dict[str, Any]]]:
    """De-duplicated batches of manifest dicts (`id`, `source`, extras) in source order."""
    seen = SeenIds()
    counts = counts if counts is not None else Counts()
    real = RealPaths()
    with ThreadPoolExecutor(min(8, (os.cpu_count() or 1) * 2)) as pool:
        for source in sources:
            for batch in source_entries(source, spec, counts.links):
                out = []
                ids = _ids(batch, source, spec, real, pool)
                fingerprints = np.array([_fingerprint(i, spec) for i in ids], dtype=np.uint64)
                for raw, row_id, fresh in zip(
                    batch, ids, seen.first_seen(fingerprints), strict=True
                ):
                    if not fresh:
                        counts.duplicates += 1
                        continue
                    columns = raw.get("columns", {})
                    columns.pop(spec.id_column, None)
                    out.append(
                        {
                            MANIFEST_ID: row_id,
                            MANIFEST_SOURCE: raw[MANIFEST_SOURCE],
                            **_renamed(columns),
                            SIGNATURE: raw.get("signature") or _signature(raw[MANIFEST_SOURCE]),
                        }
                    )
                if out:
                    yield out


def _signature(source: str) -> str | None:
    """A local file's size and modification time (`size:mtime_ns`), read from its
    inode, not its bytes: a rerun compares them to tell a replaced file. (A bucket
    listing gives each object's `size:ETag` or `size:generation` instead.) None for URLs,
    objects named one by one, and files that cannot be read (the run makes those error
    rows)."""
    if is_url(source) or is_remote(source):
        return None
    try:
        info = os.stat(source)
    except OSError:
        return None
    return f"{info.st_size}:{info.st_mtime_ns}"


def _ids(
    batch: list[dict[str, Any]],
    source: str,
    spec: RowSpec,
    real: RealPaths,
    pool: ThreadPoolExecutor,
) -> list[str]:
    """The ids of one batch of entries (and their sources made storable, in place)."""
    for raw in batch:
        path = raw[MANIFEST_SOURCE]
        if type(path) is str and not path.isascii() and not _is_utf8(path):
            raw[MANIFEST_SOURCE] = raw["key"] = _not_utf8(path)

    def key(raw: dict[str, Any]) -> str:
        """What a path id hashes (resolved only when a path id is wanted)."""
        path = raw[MANIFEST_SOURCE]
        return raw.get("key") or (path if is_url(path) or is_remote(path) else real(path))

    if spec.id_column is not None:
        return [_user_id(raw, source, spec.id_column) for raw in batch]
    if spec.id_from == "content":
        local = [not is_url(raw[MANIFEST_SOURCE]) for raw in batch]
        if not all(local):
            url = batch[local.index(False)][MANIFEST_SOURCE]
            raise UsageError(
                f"source {source!r}: --id-from content reads each image, and {url} is a URL "
                "(not downloaded at ingest); use --id-from path for URLs"
            )
        digests = content_ids([raw[MANIFEST_SOURCE] for raw in batch], pool, read_many)
        # An unreadable file keeps its path id: the run makes it an error row.
        return [d or stable_id(key(raw)) for d, raw in zip(digests, batch, strict=True)]
    return [stable_id(key(raw)) for raw in batch]


def _user_id(raw: dict[str, Any], source: str, id_column: str) -> str:
    columns = raw.get("columns", {})
    if id_column not in columns:
        raise UsageError(
            f"source {source!r}: --id-column {id_column!r} needs a list file "
            "with that column (.csv .tsv .jsonl .parquet)"
        )
    user_id = columns[id_column]
    if user_id is None or str(user_id).strip() == "":
        raise UsageError(f"{source}: id column {id_column!r} is empty for {raw[MANIFEST_SOURCE]!r}")
    return str(user_id)


def _fingerprint(row_id: str, spec: RowSpec) -> int:
    """64 bits per id for the duplicate check: ours are 64 bits already, a user's id is
    hashed down."""
    if spec.id_column is None:
        return int(row_id, 16)
    return int.from_bytes(hashlib.blake2b(row_id.encode(), digest_size=8).digest())


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unify(schemas: list[pa.Schema], label: str) -> pa.Schema:
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise UsageError(
            f"{label}: the sources' extra columns have conflicting types ({exc})"
        ) from None


WORKDIR_MARK = ".ingest-"


def remove_stale_workdirs(output: Path) -> None:
    """Remove work folders that a killed ingest into `output` left. A live ingest holds
    a lock on its own, so only abandoned ones are removed."""
    for workdir in Path(output).parent.glob(f".{Path(output).name}{WORKDIR_MARK}*"):
        try:
            fd = os.open(workdir / ".lock", os.O_RDONLY)
        except OSError:
            fd = None  # killed before it took the lock
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # in use
        finally:
            if fd is not None:
                os.close(fd)
        log.info("removing %s, left by an interrupted ingest", workdir.name)
        shutil.rmtree(workdir, ignore_errors=True)


def write_manifest(
    sources: list[str], output: Path | str, spec: RowSpec = PATH_IDS
) -> IngestSummary:
    """Stream the sources into `output`. Written to a temporary name, then renamed, so a
    failure never leaves a partial manifest (nor replaces a good one), and sources with
    no image at all are refused before anything is replaced. A bucket `output` is written
    locally, then put whole."""
    if is_remote(str(output)):
        with tempfile.TemporaryDirectory(prefix="caption-") as tmp:
            summary = write_manifest(sources, Path(tmp) / "manifest.parquet", spec)
            upload(str(summary.path), str(output))
        return replace(summary, path=output)
    # Absolute: pyarrow takes a relative path with a colon (`run-T11:48`) for a URI.
    output = Path(os.path.abspath(output))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_workdirs(output)
        workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}{WORKDIR_MARK}", dir=output.parent))
    except OSError as exc:
        raise storage_error(output.parent, exc) from None
    lock = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    counts = Counts()
    try:
        rows, schema, parts = _write_parts(sources, workdir, spec, counts)
        if rows == 0:
            raise UsageError(
                f"no images found in {', '.join(sources)} (images are "
                f"{' '.join(sorted(IMAGE_EXTENSIONS))}); nothing was written"
            )
        staged = workdir / "manifest.pq"
        with pq.ParquetWriter(staged, schema) as out:
            for part in parts:
                for _, rb in parquet_batches(part, batch_rows=BATCH_ROWS):
                    out.write_table(to_schema(pa.Table.from_batches([rb]), schema))
        os.replace(staged, output)
    except OSError as exc:
        raise storage_error(output.parent, exc) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        os.close(lock)
    return IngestSummary(
        rows=rows,
        duplicates=counts.duplicates,
        sources=len(sources),
        path=output,
        links_skipped=counts.links.skipped,
    )


def _write_parts(
    sources: list[str], workdir: Path, spec: RowSpec, counts: Counts
) -> tuple[int, pa.Schema, list[Path]]:
    """Batches to part files, a new part whenever the columns change; returns the row
    count, the unified schema (`id` and `source` first, then the extras) and the parts."""
    parts: list[tuple[Path, pa.Schema]] = []
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for batch in iter_manifest_rows(sources, spec, counts):
            table = pa.Table.from_batches([record_batch(batch)])
            if writer is None or not table.schema.equals(parts[-1][1]):
                if writer is not None:
                    writer.close()
                part = workdir / f"part-{len(parts):05d}.pq"
                parts.append((part, table.schema))
                writer = pq.ParquetWriter(part, table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    base = pa.schema(
        [
            pa.field(MANIFEST_ID, pa.string(), nullable=False),
            pa.field(MANIFEST_SOURCE, pa.string(), nullable=False),
        ]
    )
    extras = _unify([s for _, s in parts], " + ".join(sources)) if parts else pa.schema([])
    schema = pa.schema([*base, *(f for f in extras if f.name not in base.names)])
    return rows, schema, [p for p, _ in parts]


def read_manifest(
    path: Path, batch_rows: int = 8192, skip: RowBits | None = None
) -> Iterator[ManifestRow]:
    """Stream a manifest as typed rows, leaving out the rows marked in `skip` (done)."""
    try:
        pf = pq.ParquetFile(os.path.abspath(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"manifest {path}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    if MANIFEST_ID not in names or MANIFEST_SOURCE not in names:
        raise UsageError(
            f"manifest {path}: needs columns 'id' and 'source' (has {', '.join(names)})"
        )
    # A row's own columns, without those caption keeps for itself (the file signature,
    # hashes), but with a row's own prompt, which the captioner reads.
    columns = [n for n in names if not n.startswith(OWN_PREFIX) or n == ROW_PROMPT]
    # Row groups with no pending row are not read: a nightly rerun reads only the new.
    wanted = None if skip is None else (lambda a, b: not skip.window(a, b).all())
    for start, rb in parquet_batches(os.path.abspath(path), columns, batch_rows, wanted):
        if skip is not None:
            rb = rb.filter(bool_array(~skip.window(start, start + rb.num_rows)))
        for row in rb.to_pylist():
            yield ManifestRow.from_dict(row)


def sample_rows(rows: Iterable[ManifestRow], k: int, seed: int = 0) -> list[ManifestRow]:
    """A uniform random sample of `k` rows of a stream, in one pass (reservoir sampling);
    seeded, so the same manifest gives the same sample."""
    rng = random.Random(seed)
    sample: list[ManifestRow] = []
    for seen, row in enumerate(rows):
        if len(sample) < k:
            sample.append(row)
        elif (j := rng.randrange(seen + 1)) < k:
            sample[j] = row
    return sample


def is_manifest(path: str) -> bool:
    """A Parquet file that already has `id` and `source` is a manifest, used as is."""
    if not path.lower().endswith((".parquet", ".pq")):
        return False
    try:
        if is_remote(path):
            with open_binary(path) as f:
                names = pq.read_schema(f).names
        elif os.path.isfile(path):
            names = pq.read_schema(os.path.abspath(path)).names
        else:
            return False
    except (pa.ArrowInvalid, OSError):
        return False
    return MANIFEST_ID in names and MANIFEST_SOURCE in names
