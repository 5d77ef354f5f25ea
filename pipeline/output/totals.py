"""Each shard's totals, kept in its own footer when it is written, so that the books
(`books.scan`: status, report, every run's start) need only its ids and statuses.

Every shard is written by `writer.write_parquet_atomic`, which adds them: rows, ok and
error counts, cost and tokens, and error rows by kind, under the footer key
`caption.totals`. A shard without them (written by an older version, or by another tool)
is read whole, as before; totals whose row count is not the shard's are not trusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io.arrow import equals

KEY = b"caption.totals"
COLUMNS = ("status", "cost_usd", "prompt_tokens", "completion_tokens", "error_kind")


def totals_of(table: pa.Table) -> dict[str, Any]:
    """The totals of a table of result rows (it has `COLUMNS`)."""
    ok = equals(table["status"], "ok")
    errors = table.filter(pc.invert(ok))
    by_kind: dict[str, int] = {}
    for k in pc.value_counts(errors["error_kind"]).to_pylist():
        kind = k["values"] or "unknown"  # rows from before error_kind existed
        by_kind[kind] = by_kind.get(kind, 0) + k["counts"]
    return {
        "rows": table.num_rows,
        "ok": table.num_rows - errors.num_rows,
        "errors": errors.num_rows,
        "cost_usd": pc.sum(table["cost_usd"]).as_py() or 0.0,
        "prompt_tokens": pc.sum(table["prompt_tokens"]).as_py() or 0,
        "completion_tokens": pc.sum(table["completion_tokens"]).as_py() or 0,
        "errors_by_kind": by_kind,
    }


def with_totals(table: pa.Table) -> pa.Table:
    """`table` with its totals in its schema's metadata (which Parquet keeps in the
    footer); a table without the result columns (not a shard) as it is."""
    if not all(c in table.column_names for c in COLUMNS):
        return table
    meta = dict(table.schema.metadata or {})
    meta[KEY] = json.dumps(totals_of(table)).encode()
    return table.replace_schema_metadata(meta)


def read_totals(path: Path) -> dict[str, Any] | None:
    """A shard's totals from its footer, or None (absent, unreadable, or not its own)."""
    try:
        meta = pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError):
        return None  # the read that follows names the shard
    raw = (meta.metadata or {}).get(KEY)
    if raw is None:
        return None
    try:
        found = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(found, dict) or found.get("rows") != meta.num_rows:
        return None
    return found
