"""`caption export OUT -o FILE`: the results as one file, with the sources' own columns.

Shards hold the result columns only; the sources' own columns (labels, splits, your ids)
are in the manifest. The export joins them, one shard at a time, into `.parquet`,
`.jsonl` or `.csv` (where nested columns, such as `choices`, become JSON text). Memory
holds the manifest's own columns and one shard, never all the results. The file is
written under a temporary name and renamed, so a failed export leaves nothing half
written. Read-only for the output folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import UsageError, storage_error
from pipeline.io.arrow import bool_array, combined
from pipeline.io.rowgroups import RowGroups
from pipeline.io.storage import deliver, is_remote
from pipeline.output.books import read_shard
from pipeline.output.folder import OutputDir
from pipeline.output.marks import shard_rows
from pipeline.records import MANIFEST_ID, MANIFEST_SOURCE, OWN_PREFIX, PARSED

FORMATS = (".parquet", ".jsonl", ".csv")


def export(out_path: Path, target: str | Path, include_removed: bool = False) -> int:
    """Write the folder's results joined with the manifest's own columns to `target` (a
    local path, its folders made, or a bucket object), whole or not at all; the row
    count. Rows whose source left the manifest (removed) are left out unless asked for."""
    target = str(target)
    fmt = PurePath(target).suffix.lower()
    if fmt not in FORMATS:
        raise UsageError(f"-o {target}: the file name must end in {', '.join(FORMATS)}")
    out = OutputDir(out_path)
    if not out.exists() or not out.manifest.exists():
        raise UsageError(f"{out_path}: not a caption output folder (no manifest)")
    if not is_remote(target) and Path(target).is_dir():
        raise UsageError(f"-o {target}: is a folder; name the file to write")
    if is_remote(target):  # written here, then one PUT
        with tempfile.TemporaryDirectory(prefix="caption-export-") as tmp:
            staged = Path(tmp) / f"export{fmt}"
            try:
                rows = _write(out, fmt, staged, include_removed)
            except OSError as exc:
                raise storage_error(staged.parent, exc) from None
            deliver(staged, target)
        return rows
    path = Path(os.path.abspath(target))
    staged = path.with_name(f".{path.name}.tmp")  # beside it: the rename is atomic
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = _write(out, fmt, staged, include_removed)
        os.replace(staged, path)
    except OSError as exc:
        raise storage_error(path.parent, exc) from None
    finally:
        staged.unlink(missing_ok=True)
    return rows


# Rows written at once: one Parquet row group. The writer keeps every row group's
# metadata until it closes (about 27 KB each here); a row group a shard made a 100M-row
# export's writer hold and then serialise some 400 MB of it.
GROUP_ROWS = 1 << 17


def _write(out: OutputDir, fmt: str, path: Path, include_removed: bool) -> int:
    rows = 0
    with _writer(fmt, path, _schema(out)) as write:
        held: list[pa.Table] = []
        for table in joined(out, include_removed):
            held.append(table)
            rows += table.num_rows
            if sum(t.num_rows for t in held) >= GROUP_ROWS:
                write(pa.concat_tables(held))
                held = []
        if held:
            write(pa.concat_tables(held))
    return rows


def _theirs(names: list[str]) -> list[str]:
    """The manifest's columns a reader gets beside the results: the user's own, not the
    id and source (the results have them) nor caption's own (`records.OWN_PREFIX`)."""
    return [
        n for n in names if n not in (MANIFEST_ID, MANIFEST_SOURCE) and not n.startswith(OWN_PREFIX)
    ]


def _schema(out: OutputDir) -> pa.Schema:
    own = pq.read_schema(out.manifest)
    return pa.schema([*out.result_schema(), *(own.field(n) for n in _theirs(own.names))])


def joined(out: OutputDir, include_removed: bool = False) -> Iterator[pa.Table]:
    """Each shard with the manifest's own columns of its rows beside it. A row whose
    source left the manifest (removed by a later run's sources) is left out, or kept
    with nulls beside it when `include_removed`. Where each row is in the manifest comes
    from one partitioned join (`marks.shard_rows`), and the manifest's columns are read
    a row group at a time as the shards need them: memory holds a shard, not the folder."""
    theirs = _theirs(pq.read_schema(out.manifest).names)
    extras = RowGroups(str(out.manifest), theirs) if theirs else None
    names = out.result_schema().names
    shards = out.shards()
    where = shard_rows(
        out.manifest, (read_shard(s, columns=[MANIFEST_ID])[MANIFEST_ID] for s in shards)
    )
    for shard, at in zip(shards, where, strict=True):
        results = read_shard(shard).select(names)
        if not include_removed and (at < 0).any():
            results, at = results.filter(bool_array(at >= 0)), at[at >= 0]
        if extras is not None:
            beside = extras.take(at)  # a removed row's: nulls
            for name in beside.column_names:
                results = results.append_column(name, beside[name])
        yield results


def _parsed_struct(schema: pa.Schema) -> int | None:
    for i, f in enumerate(schema):
        if (f.name == PARSED or f.name.startswith(PARSED + ".")) and pa.types.is_struct(f.type):
            return i
    return None


class _writer:
    """A context manager giving `write(table)` for the format."""

    def __init__(self, fmt: str, path: Path, schema: pa.Schema) -> None:
        self.fmt, self.path, self.schema = fmt, path, schema

    def __enter__(self) -> Callable[[pa.Table], None]:
        if self.fmt == ".parquet":
            self._pq = pq.ParquetWriter(self.path, self.schema)
            return self._pq.write_table
        if self.fmt == ".csv":
            self._csv: pacsv.CSVWriter | None = None
            return self._write_csv
        self._file = open(self.path, "wb")
        return self._write_jsonl

    def _write_csv(self, table: pa.Table) -> None:
        flat = _flat(table)
        if self._csv is None:
            self._csv = pacsv.CSVWriter(self.path, flat.schema)
        self._csv.write_table(flat)

    def _write_jsonl(self, table: pa.Table) -> None:
        self._file.write(
            b"".join(
                orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in table.to_pylist()
            )
        )

    def __exit__(self, *exc: object) -> None:
        if self.fmt == ".parquet":
            self._pq.close()
        elif self.fmt == ".csv":
            if self._csv is None:  # no shard at all: a header-only file
                pacsv.CSVWriter(self.path, _flat(self.schema.empty_table()).schema).close()
            else:
                self._csv.close()
        else:
            self._file.close()


def flatten_parsed(table: pa.Table) -> pa.Table:
    """A structured job's `parsed` as one column per field (`parsed.label`, and
    `parsed.box.x` for nested objects)."""
    while (i := _parsed_struct(table.schema)) is not None:
        field = table.schema.field(i)
        children = combined(table.column(i)).flatten()  # a null struct: null fields
        table = table.remove_column(i)
        for j, child in enumerate(field.type):
            table = table.add_column(i + j, f"{field.name}.{child.name}", children[j])
    return table


def _flat(table: pa.Table) -> pa.Table:
    """For CSV: `parsed` flattened, other nested columns (lists, structs) as JSON text."""
    table = flatten_parsed(table)
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            text = [None if v is None else orjson.dumps(v).decode() for v in table[i].to_pylist()]
            table = table.set_column(i, field.name, pa.array(text, pa.string()))
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            table = table.set_column(i, field.name, formula_safe(table[i]))
    return table


# A cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection").
_FORMULA = r"^[=+\-@\t\r]"


def formula_safe(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text cells a spreadsheet would run as formulas, prefixed with `'` (OWASP's advice):
    an answer or a file name never becomes a formula when the CSV is opened."""
    risky = pc.match_substring_regex(column, _FORMULA)
    return pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)
