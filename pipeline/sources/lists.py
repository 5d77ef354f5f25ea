"""List files: .txt, .csv, .tsv, .jsonl and .parquet lists of image paths or URLs.

Each reader streams batches of plain dicts: `source` (an absolute path or a URL) and, for
tabular lists, `columns`: the list's other columns, kept apart so that a user's `source`
or `id` can never stand in for ours (the id is made by `sources/manifest.py`).
Relative paths resolve against the list file's folder.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import UsageError
from pipeline.io.arrow import nullable_string_array, string_array
from pipeline.io.storage import is_remote, join, open_binary
from pipeline.records import MANIFEST_ID, MANIFEST_SOURCE, SIGNATURE
from pipeline.sources.images import is_url

LIST_EXTENSIONS = frozenset({".txt", ".csv", ".tsv", ".jsonl", ".parquet", ".pq"})
SOURCE_COLUMNS = ("image", "image_url", "url", "path", "file")
BATCH_ROWS = 16_384


def read_list(
    path: str, column: str | None, id_column: str | None
) -> Iterator[list[dict[str, Any]]]:
    """Batches of entries of the list file `path` (its extension says its format)."""
    ext = os.path.splitext(path)[1].lower()
    base = path.rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(path)
    if ext == ".txt":
        yield from _read_txt(path, base)
    elif ext in (".csv", ".tsv"):
        yield from _read_csv(path, base, column, id_column, "\t" if ext == ".tsv" else ",")
    elif ext == ".jsonl":
        yield from _read_jsonl(path, base, column, id_column)
    elif ext in (".parquet", ".pq"):
        yield from _read_parquet(path, base, column, id_column)
    else:
        raise ValueError(f"not a list file: {path}")


def _entry(value: str, base: str, label: str) -> dict[str, Any]:
    """Resolve one path-or-URL entry of a list file against the list file's folder."""
    value = value.strip()
    if is_url(value) or is_remote(value):
        return {"source": value}
    if "://" in value:
        raise UsageError(
            f"{label}: {value!r}: only local paths, http(s) URLs and s3:// or gs:// objects "
            "are supported"
        )
    if is_remote(base):  # a list in a bucket: its relative entries are objects beside it
        return {"source": join(base, value.removeprefix("./"))}
    path = value if os.path.isabs(value) else os.path.join(base, value)
    return {"source": os.path.abspath(path)}


def _open_text(path: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(open_binary(path), encoding="utf-8")


def _read_txt(path: str, base: str) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    with _open_text(path) as f:
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
            entry["columns"] = row  # the user's, kept apart: never in place of ours
            out.append(entry)
        seen += len(rows)
        yield out


def _read_csv(
    path: str, base: str, column: str | None, id_column: str | None, delimiter: str
) -> Iterator[list[dict[str, Any]]]:
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        with open_binary(path) as f:
            reader = pacsv.open_csv(f, parse_options=pacsv.ParseOptions(delimiter=delimiter))
            yield from _tabular_batches(reader, path, base, column, id_column)
    except pa.ArrowInvalid as exc:
        raise UsageError(f"{path}: malformed {kind} ({exc})") from None


def _is_str(*values: object) -> bool:
    return all(type(v) is str for v in values)


def record_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Manifest dicts as a record batch. Rows may have different keys (`from_pylist` would
    keep only the first row's); rows of just `id`, `source` and the file's signature skip
    pyarrow's inference (and its import of pandas)."""
    plain = (MANIFEST_ID, MANIFEST_SOURCE)
    if all(
        row.keys() <= {*plain, SIGNATURE}
        and _is_str(row.get(MANIFEST_ID), row.get(MANIFEST_SOURCE))
        for row in rows
    ):
        arrays = [string_array([row[k] for row in rows]) for k in plain]
        names = list(plain)
        if any(SIGNATURE in row for row in rows):
            arrays.append(nullable_string_array([row.get(SIGNATURE) for row in rows]))
            names.append(SIGNATURE)
        return pa.RecordBatch.from_arrays(arrays, names=names)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return pa.RecordBatch.from_pydict({k: [row.get(k) for row in rows] for k in keys})


def _read_jsonl(
    path: str, base: str, column: str | None, id_column: str | None
) -> Iterator[list[dict[str, Any]]]:
    def batches() -> Iterator[pa.RecordBatch]:
        rows: list[dict[str, Any]] = []
        with _open_text(path) as f:
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
        pf = pq.ParquetFile(open_binary(path) if is_remote(path) else os.path.abspath(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"{path}: not a readable Parquet file ({exc})") from None
    yield from _tabular_batches(
        pf.iter_batches(batch_size=BATCH_ROWS), path, base, column, id_column
    )
