"""The journal: one line of JSON per result row, appended as each answer arrives, and
read back into a table of the result columns when its shard is folded (`writer.py`).

A last line without its newline (torn by a kill) is ignored. A line that does not read
(torn by a full disk under an older version, or damaged) is skipped and named by its
byte offset, and only its row is sent again: one bad line never locks away the paid rows
around it.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.json as pajson

from pipeline.records import RESULT_SCHEMA, ResultRow

log = logging.getLogger(__name__)


_encode_line = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def journal_line(row: ResultRow) -> bytes:
    """The row as one line of UTF-8 JSON that the fold can always read.

    orjson writes it (the fast path). It refuses a lone surrogate (an answer's
    unpaired \\ud83d escape, a server message cut mid-character), which json would write
    as an escape that Arrow then rejects, and with it the whole journal: such a line is
    written by json with the surrogate replaced by U+FFFD.
    """
    core = row.core_dict()
    try:
        return orjson.dumps(core, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        text = _encode_line(core) + "\n"
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()


def _journal_schema(schema: pa.Schema) -> pa.Schema:
    """The journal's JSON holds `finished_at` as epoch milliseconds; it is cast after parsing."""
    return pa.schema(
        [pa.field(f.name, pa.int64()) if f.name == "finished_at" else f for f in schema]
    )


# Arrow parses JSON in blocks, and a line may not straddle two of them: the block must be
# larger than the longest line (an answer can be megabytes). Its default is 1 MiB.
_MIN_BLOCK = 1 << 20
# Every journal line starts with this (the row's first key), and nowhere else: inside a JSON
# string a quote is escaped. A line glued to the rest of a torn one is found by it.
_LINE_START = b'{"id":'


def _parse_lines(data: bytes, schema: pa.Schema) -> pa.Table:
    """Whole journal lines (each ending in a newline) as a table; ArrowInvalid if any
    line does not fit the result columns."""
    longest = max(map(len, data.split(b"\n")))
    return pajson.read_json(
        io.BytesIO(data),
        read_options=pajson.ReadOptions(block_size=max(_MIN_BLOCK, 2 * longest + 2)),
        parse_options=pajson.ParseOptions(
            explicit_schema=_journal_schema(schema), unexpected_field_behavior="error"
        ),
    )


def _readable(line: bytes, schema: pa.Schema) -> bool:
    try:
        _parse_lines(line + b"\n", schema)
    except pa.ArrowInvalid:
        return False
    return True


def _salvage(data: bytes, path: Path, schema: pa.Schema) -> pa.Table:
    """The slow path, for a journal with a bad line: keep every line that reads, and a
    whole line glued after a torn one; name each torn piece by its byte offset."""
    good: list[bytes] = []
    offset = 0
    for line in data.split(b"\n")[:-1]:
        if line and not _readable(line, schema):
            # A torn line may have the next, whole line glued to its end.
            cut = line.find(_LINE_START, 1)
            while cut != -1 and not _readable(line[cut:], schema):
                cut = line.find(_LINE_START, cut + 1)
            torn = line if cut == -1 else line[:cut]
            log.warning(
                "%s: byte %d: skipping %d bytes of a torn or unreadable line; "
                "that row will be sent again",
                path.name,
                offset,
                len(torn),
            )
            if cut != -1:
                good.append(line[cut:])
        elif line:
            good.append(line)
        offset += len(line) + 1
    if not good:
        return _journal_schema(schema).empty_table()
    return _parse_lines(b"\n".join(good) + b"\n", schema)


def read_journal(path: Path, schema: pa.Schema = RESULT_SCHEMA) -> pa.Table:
    """Every whole row of a journal as a table of the result columns.

    A last line without its newline (torn by a kill) is ignored. A line that does not read
    (torn by a full disk under an older version, or damaged) is skipped and named by its
    byte offset, so that one bad line never locks away the paid rows around it.
    """
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1
    if whole < len(data):
        log.warning("%s: byte %d: ignoring a torn last line (the run was killed)", path.name, whole)
    if whole == 0:
        return schema.empty_table()
    try:
        table = _parse_lines(data[:whole], schema)
    except pa.ArrowInvalid:
        table = _salvage(data[:whole], path, schema)
    return table.select(schema.names).cast(schema)
