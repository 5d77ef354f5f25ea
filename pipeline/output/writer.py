"""Writer: result rows -> a crash-safe journal -> complete Parquet shards.

Every result is appended to the current shard's journal (`.caption/part-N.journal.jsonl`, one JSON
line per row, written with a single unbuffered `write`) before the next row is taken, so
a `kill -9` loses no answer that arrived. When the shard is full, or the run ends, the
journal is folded into `part-N.parquet`: parsed by Arrow's JSON reader, written under a
temporary name, fsynced, renamed, and only then deleted. A shard is therefore visible
only complete, and folding a journal that a killed run left behind is the same code path
(a last line torn by the kill is ignored; a line that does not read is skipped, named by
its byte offset, and its row sent again: one bad line never locks away the others).

Every shard of a folder has the one schema, `RESULT_SCHEMA` (and a structured job's
`parsed`), whatever the sources' own columns do from night to night: those stay in the
manifest, and `caption export` joins them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import storage_error
from pipeline.output.journal import journal_line, read_journal
from pipeline.output.layout import JOURNAL_SUFFIX, SEQUENCE, SHARD_SUFFIX, STATE_DIR, TMP_SUFFIX
from pipeline.output.totals import with_totals
from pipeline.records import RESULT_SCHEMA, ResultRow

log = logging.getLogger(__name__)


def shard_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}{SHARD_SUFFIX}"


def state_dir(out_dir: Path) -> Path:
    return out_dir / STATE_DIR


def journal_path(out_dir: Path, name: str) -> Path:
    return state_dir(out_dir) / f"{name}{JOURNAL_SUFFIX}"


def next_sequence(out_dir: Path) -> int:
    """One past the highest `part-N` number in the folder (shards and journals alike)."""
    paths = [*out_dir.glob("part-*"), *state_dir(out_dir).glob("part-*")]
    numbers = [int(m[1]) for p in paths if (m := SEQUENCE.match(p.name))]
    return max(numbers, default=-1) + 1


def write_parquet_atomic(table: pa.Table, path: Path, tmp: Path | None = None) -> None:
    """Write under a temporary name (in the state folder, unless `tmp` names it), fsync,
    rename: visible only complete. A table of result rows gets its totals in its footer
    (`output/totals.py`). A failure (no space left, say) leaves nothing behind
    and raises StorageError."""
    tmp = stage_parquet(table, path, tmp)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(path.parent, exc) from None


def stage_parquet(table: pa.Table, path: Path, tmp: Path | None = None) -> Path:
    """`write_parquet_atomic` up to the rename: the complete file under its temporary
    name, which is returned, for the caller to rename when it is ready."""
    tmp = tmp or state_dir(path.parent) / (path.name + TMP_SUFFIX)
    try:
        tmp.parent.mkdir(exist_ok=True)
        pq.write_table(with_totals(table), tmp)  # a shard's totals in its footer
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(path.parent, exc) from None
    return tmp


def fold_journal(journal: Path, schema: pa.Schema = RESULT_SCHEMA) -> Path | None:
    """Turn a journal into its Parquet shard (None if it held no whole row)."""
    folder = journal.parent.parent if journal.parent.name == STATE_DIR else journal.parent
    shard = folder / (journal.name.removesuffix(JOURNAL_SUFFIX) + ".parquet")
    if shard.exists():
        # Killed after the rename but before the unlink: the shard is already complete.
        journal.unlink()
        return shard
    core = read_journal(journal, schema)
    if core.num_rows:
        write_parquet_atomic(core, shard)
    journal.unlink()
    return shard if core.num_rows else None


class ResultSink(Protocol):
    def write(self, row: ResultRow) -> None: ...


class ShardWriter:
    """Appends result rows to journal-protected shards of at most `rows_per_shard` rows.

    Shards are named `{prefix}-{N:05d}`: the local executor numbers them from what the
    folder holds; a distributed executor can give each task its own prefix.

    A journal only ever holds whole lines. A write that fails part-way (no space left) is
    cut back to the last whole line and raises StorageError; the row is kept in memory and
    written first when space allows (at the latest on `close`), so an answer that arrived
    is lost only if the disk stays full to the end.
    """

    def __init__(
        self,
        out_dir: Path,
        rows_per_shard: int,
        first_sequence: int | None = None,
        prefix: str = "part",
        schema: pa.Schema = RESULT_SCHEMA,
    ) -> None:
        self.out_dir = out_dir
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.prefix = prefix
        self._sequence = next_sequence(out_dir) if first_sequence is None else first_sequence
        self._fd: int | None = None
        self._journal: Path | None = None
        self._size = 0  # bytes of whole lines in the journal
        self._torn = False  # a failed write left a piece that could not be cut off
        self._rows = 0
        # Rows answered but not yet journaled, because a write failed.
        self.unsaved: list[ResultRow] = []
        self.shards: list[Path] = []

    def write(self, row: ResultRow) -> None:
        """Journal the row, or keep it and raise StorageError if the disk refuses."""
        self.unsaved.append(row)
        self._drain()

    def _drain(self) -> None:
        while self.unsaved:
            self._append(self.unsaved[0])
            del self.unsaved[0]
            if self._rows >= self.rows_per_shard:
                self.flush()

    def _append(self, row: ResultRow) -> None:
        if self._fd is None:
            name = f"{self.prefix}-{self._sequence:05d}"
            self._sequence += 1
            self._journal = journal_path(self.out_dir, name)
            try:
                self._journal.parent.mkdir(exist_ok=True)
                self._fd = os.open(self._journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError as exc:
                self._journal = None
                raise storage_error(self.out_dir, exc) from None
            self._size = 0
        line = journal_line(row)
        if self._torn:
            line = b"\n" + line  # a torn piece that could not be cut off ends here
        try:
            _write_all(self._fd, line)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._size)
                self._torn = False
            except OSError:
                # The reader skips the torn piece; the next line must start a line.
                self._torn = True
            raise storage_error(self.out_dir, exc) from None
        if self._torn:
            self._size = os.fstat(self._fd).st_size
            self._torn = False
        else:
            self._size += len(line)
        self._rows += 1

    def flush(self) -> None:
        """Write the current shard (if any rows) and start a new one on the next write.
        If the fold fails (no space), the journal stays, whole, for the next run."""
        if self._fd is None or self._journal is None:
            return
        os.close(self._fd)
        self._fd = None
        journal, rows = self._journal, self._rows
        self._rows = 0
        self._journal = None
        shard = fold_journal(journal, self.schema)
        if shard is not None:
            self.shards.append(shard)
            log.debug("wrote %s (%d rows)", shard.name, rows)

    def close(self) -> None:
        """Journal any rows kept back by a failed write, then write the shard."""
        try:
            self._drain()
        finally:
            self.flush()


def _write_all(fd: int, data: bytes) -> None:
    """`os.write` until all of `data` is written: when the disk fills it may write part
    of a line and report it only through its count, and only the next call raises."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
