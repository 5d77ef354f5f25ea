"""Manifest reader: image sources -> one Parquet manifest with stable ids.

A source is a folder (recursive), a glob, an http(s) URL, a single image, or a list file
(.txt, .csv, .tsv, .jsonl, .parquet). Everything streams in batches: memory holds one batch
and the set of 64-bit ids seen so far (for de-duplication), never the whole list.

`id` is a hash of the source *as the user named it*: the URL, or the path reached from the
argument given (`data/samples/cat.png`), so the same command gives the same ids on any run
and any machine. `--id-column` uses the user's own ids instead.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import posixpath
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.arrow import string_array
from pipeline.errors import UsageError
from pipeline.images import is_url
from pipeline.records import MANIFEST_ID, MANIFEST_SOURCE, RESULT_COLUMNS, ManifestRow

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
LIST_EXTENSIONS = frozenset({".txt", ".csv", ".tsv", ".jsonl", ".parquet"})
SOURCE_COLUMNS = ("image", "image_url", "url", "path", "file")
BATCH_ROWS = 16_384


@dataclass(frozen=True, slots=True)
class IngestSummary:
    rows: int
    duplicates: int
    sources: int
    path: Path

    def line(self) -> str:
        return (
            f"ingested {self.rows} rows from {self.sources} source(s); "
            f"{self.duplicates} duplicate(s) dropped -> {self.path}"
        )


def stable_id(key: str) -> str:
    """16 hex digits of SHA-256: stable across runs, machines and Python versions."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _portable(path: str) -> str:
    """The path normalised, with forward slashes on every OS (it is hashed into the id)."""
    normal = os.path.normpath(path)
    return normal if os.sep == "/" else normal.replace(os.sep, "/")


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------
# Each reader yields batches of plain dicts: {"key", "source", <extra columns>...}.
# `key` is what the id is hashed from; it is not stored.


def _entry(value: str, base: str, label: str) -> dict[str, Any]:
    """Resolve one path-or-URL entry of a list file against the list file's folder."""
    value = value.strip()
    if is_url(value):
        return {"key": value, "source": value}
    if "://" in value:
        raise UsageError(f"{label}: {value!r}: only local paths and http(s) URLs are supported")
    key = value if os.path.isabs(value) else os.path.join(base, value)
    return {"key": _portable(key), "source": os.path.abspath(key)}


def _walk_folder(folder: str) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        # Each folder is normalised once, not each file: a plain file name appended gives
        # what `_portable` and `abspath` of the whole path would, at a third of the cost.
        key_root = _portable(root)
        abs_root = os.path.abspath(root)
        for name in sorted(files):
            if _is_image_name(name):
                key = name if key_root == "." else posixpath.join(key_root, name)
                batch.append({"key": key, "source": os.path.join(abs_root, name)})
                if len(batch) >= BATCH_ROWS:
                    yield batch
                    batch = []
    if batch:
        yield batch


def _glob(pattern: str) -> Iterator[list[dict[str, Any]]]:
    paths = sorted(p for p in glob.iglob(pattern, recursive=True) if os.path.isfile(p))
    images = [p for p in paths if _is_image_name(p)]
    if not images:
        raise UsageError(
            f"source {pattern!r}: the glob matched no image files "
            f"({len(paths)} file(s) of other types; images are "
            f"{' '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    for start in range(0, len(images), BATCH_ROWS):
        yield [
            {"key": _portable(p), "source": os.path.abspath(p)}
            for p in images[start : start + BATCH_ROWS]
        ]


def _read_txt(path: str, base: str) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            batch.append(_entry(text, base, f"{path}:{lineno}"))
            if len(batch) >= BATCH_ROWS:
                yield batch
                batch = []
    if batch:
        yield batch


def _pick_column(names: list[str], column: str | None, label: str) -> str:
    if column is not None:
        if column not in names:
            raise UsageError(f"{label}: no column {column!r} (columns: {', '.join(names)})")
        return column
    for candidate in SOURCE_COLUMNS:
        if candidate in names:
            return candidate
    raise UsageError(
        f"{label}: no image column; name one with --column, or use one of "
        f"{', '.join(SOURCE_COLUMNS)} (columns: {', '.join(names) or 'none'})"
    )


def _tabular_batches(
    batches: Iterable[pa.RecordBatch],
    path: str,
    base: str,
    column: str | None,
    id_column: str | None,
) -> Iterator[list[dict[str, Any]]]:
    picked: str | None = None
    seen = 0
    for rb in batches:
        if picked is None:
            picked = _pick_column(rb.schema.names, column, path)
            if id_column is not None and id_column not in rb.schema.names:
                raise UsageError(
                    f"{path}: no id column {id_column!r} (columns: {', '.join(rb.schema.names)})"
                )
        rows = rb.to_pylist()
        out = []
        for i, row in enumerate(rows, seen + 1):
            value = row.pop(picked)
            if value is None or not isinstance(value, str) or not value.strip():
                raise UsageError(f"{path}: row {i}: column {picked!r} is empty or not text")
            entry = _entry(value, base, path)
            entry.update(row)
            out.append(entry)
        seen += len(rows)
        yield out


def _read_csv(
    path: str, base: str, column: str | None, id_column: str | None, delimiter: str
) -> Iterator[list[dict[str, Any]]]:
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        reader = pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter))
        yield from _tabular_batches(reader, path, base, column, id_column)
    except pa.ArrowInvalid as exc:
        raise UsageError(f"{path}: malformed {kind} ({exc})") from None


def _is_str(*values: object) -> bool:
    return all(type(v) is str for v in values)


def record_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Manifest dicts as a record batch. Rows may have different keys (`from_pylist` would
    keep only the first row's); rows of just `id` and `source` skip pyarrow's inference."""
    if all(
        len(row) == 2 and _is_str(row.get(MANIFEST_ID), row.get(MANIFEST_SOURCE)) for row in rows
    ):
        return pa.RecordBatch.from_arrays(
            [string_array([row[k] for row in rows]) for k in (MANIFEST_ID, MANIFEST_SOURCE)],
            names=[MANIFEST_ID, MANIFEST_SOURCE],
        )
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return pa.RecordBatch.from_pydict({k: [row.get(k) for row in rows] for k in keys})


def _read_jsonl(
    path: str, base: str, column: str | None, id_column: str | None
) -> Iterator[list[dict[str, Any]]]:
    def batches() -> Iterator[pa.RecordBatch]:
        rows: list[dict[str, Any]] = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise UsageError(f"{path}:{lineno}: each line must be a JSON object")
                rows.append(obj)
                if len(rows) >= BATCH_ROWS:
                    yield record_batch(rows)
                    rows = []
        if rows:
            yield record_batch(rows)

    yield from _tabular_batches(batches(), path, base, column, id_column)


def _read_parquet(
    path: str, base: str, column: str | None, id_column: str | None
) -> Iterator[list[dict[str, Any]]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"{path}: not a readable Parquet file ({exc})") from None
    yield from _tabular_batches(
        pf.iter_batches(batch_size=BATCH_ROWS), path, base, column, id_column
    )


def _source_batches(
    source: str, column: str | None, id_column: str | None
) -> Iterator[list[dict[str, Any]]]:
    if is_url(source):
        yield [{"key": source, "source": source}]
        return
    if os.path.isdir(source):
        yield from _walk_folder(source)
        return
    if os.path.isfile(source):
        ext = os.path.splitext(source)[1].lower()
        base = os.path.dirname(source)
        try:
            if ext == ".txt":
                yield from _read_txt(source, base)
            elif ext in (".csv", ".tsv"):
                yield from _read_csv(
                    source, base, column, id_column, "\t" if ext == ".tsv" else ","
                )
            elif ext == ".jsonl":
                yield from _read_jsonl(source, base, column, id_column)
            elif ext == ".parquet":
                yield from _read_parquet(source, base, column, id_column)
            elif ext in IMAGE_EXTENSIONS:
                yield [{"key": _portable(source), "source": os.path.abspath(source)}]
            else:
                raise UsageError(
                    f"source {source!r}: unsupported file type {ext or '(none)'}; expected an "
                    f"image or a list file ({' '.join(sorted(LIST_EXTENSIONS))})"
                )
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        except PermissionError:
            raise UsageError(f"{source}: permission denied") from None
        return
    if _has_magic(source):
        yield from _glob(source)
        return
    raise UsageError(f"source {source!r}: no such file or folder")


# ---------------------------------------------------------------------------------------


def _rename_reserved(row: dict[str, Any]) -> dict[str, Any]:
    """User columns may not shadow ours: `id` becomes `input_id`, `status` `input_status`..."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in ("key", MANIFEST_SOURCE):
            out[name] = value
        elif name in RESULT_COLUMNS:
            out[f"input_{name}"] = value
        else:
            out[name] = value
    return out


def _check_utf8(path: str, source: str) -> None:
    """A file name that is not UTF-8 reaches Python with surrogate escapes; the manifest
    holds paths as UTF-8 text, so it cannot be stored (and would crash the id hash)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"source {source!r}: {os.fsencode(path)!r} is not a UTF-8 file name; manifests "
            "store paths as UTF-8 text, so rename the file (e.g. convmv -f latin1 -t utf8)"
        ) from None


def iter_manifest_rows(
    sources: Iterable[str],
    *,
    column: str | None = None,
    id_column: str | None = None,
    counter: dict[str, int] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """De-duplicated batches of manifest dicts (`id`, `source`, extras) in source order."""
    seen: set[int] = set()
    counts = counter if counter is not None else {}
    counts.setdefault("duplicates", 0)
    for source in sources:
        for batch in _source_batches(source, column, id_column):
            out = []
            for raw in batch:
                key = raw.pop("key")
                path = raw[MANIFEST_SOURCE]
                if type(path) is str and not path.isascii():
                    _check_utf8(path, source)
                if id_column is not None:
                    if id_column not in raw:
                        raise UsageError(
                            f"source {source!r}: --id-column {id_column!r} needs a list file "
                            "with that column (.csv .tsv .jsonl .parquet)"
                        )
                    user_id = raw.pop(id_column)
                    if user_id is None or str(user_id).strip() == "":
                        raise UsageError(f"{source}: id column {id_column!r} is empty for {key!r}")
                    row_id = str(user_id)
                else:
                    row_id = stable_id(key)
                # Our ids are 64 bits already; a user's id is hashed down to 64 bits.
                fingerprint = (
                    int(row_id, 16)
                    if id_column is None
                    else int.from_bytes(hashlib.blake2b(row_id.encode(), digest_size=8).digest())
                )
                if fingerprint in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(fingerprint)
                row = _rename_reserved(raw)
                out.append({MANIFEST_ID: row_id, **row})
            if out:
                yield out


def _unify(schemas: list[pa.Schema], label: str) -> pa.Schema:
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise UsageError(
            f"{label}: the sources' extra columns have conflicting types ({exc})"
        ) from None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def write_manifest(
    sources: list[str], output: Path, *, column: str | None = None, id_column: str | None = None
) -> IngestSummary:
    """Stream the sources into `output`. Written to a temporary name, then renamed, so a
    failure never leaves a partial manifest (nor replaces a good one)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    counts: dict[str, int] = {}
    rows = 0
    try:
        # Phase 1: batches to part files, a new part whenever the columns change.
        parts: list[tuple[Path, pa.Schema]] = []
        writer: pq.ParquetWriter | None = None
        for batch in iter_manifest_rows(
            sources, column=column, id_column=id_column, counter=counts
        ):
            table = pa.Table.from_batches([record_batch(batch)])
            if writer is None or not table.schema.equals(parts[-1][1]):
                if writer is not None:
                    writer.close()
                part = workdir / f"part-{len(parts):05d}.parquet"
                parts.append((part, table.schema))
                writer = pq.ParquetWriter(part, table.schema)
            writer.write_table(table)
            rows += table.num_rows
        if writer is not None:
            writer.close()

        # Phase 2: one file, one schema. `id` and `source` first, then the extras.
        base = pa.schema(
            [
                pa.field(MANIFEST_ID, pa.string(), nullable=False),
                pa.field(MANIFEST_SOURCE, pa.string(), nullable=False),
            ]
        )
        extras = _unify([s for _, s in parts], " + ".join(sources)) if parts else pa.schema([])
        schema = pa.schema([*base, *(f for f in extras if f.name not in base.names)])
        tmp = workdir / "manifest.parquet"
        with pq.ParquetWriter(tmp, schema) as out:
            for part, _ in parts:
                for rb in pq.ParquetFile(part).iter_batches(batch_size=BATCH_ROWS):
                    out.write_table(_conform(pa.Table.from_batches([rb]), schema))
        os.replace(tmp, output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = IngestSummary(
        rows=rows, duplicates=counts.get("duplicates", 0), sources=len(sources), path=output
    )
    if rows == 0:
        log.warning("no images found in %s", ", ".join(sources))
    return summary


def read_manifest(
    path: Path, batch_rows: int = 8192, skip: pa.Array | None = None
) -> Iterator[ManifestRow]:
    """Stream a manifest as typed rows, leaving out the ids in `skip` (done rows)."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"manifest {path}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    if MANIFEST_ID not in names or MANIFEST_SOURCE not in names:
        raise UsageError(
            f"manifest {path}: needs columns 'id' and 'source' (has {', '.join(names)})"
        )
    for rb in without_done(pf.iter_batches(batch_size=batch_rows), skip):
        for row in rb.to_pylist():
            yield ManifestRow.from_dict(row)


def without_done(
    batches: Iterable[pa.RecordBatch], skip: pa.Array | None
) -> Iterator[pa.RecordBatch]:
    """Leave out the rows whose id is in `skip` (rows an output folder already holds)."""
    for batch in batches:
        if skip is not None and len(skip):
            batch = batch.filter(pc.invert(pc.is_in(batch.column(MANIFEST_ID), value_set=skip)))
        yield batch


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
    if not path.lower().endswith(".parquet") or not os.path.isfile(path):
        return False
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError):
        return False
    return MANIFEST_ID in names and MANIFEST_SOURCE in names
