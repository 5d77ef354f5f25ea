"""The folder's books: what is done, and every paid attempt, kept once.

A folder holds one current row per id in its shards. When `--retry-errors` (or a retried
Ray block) answers an id again, the older row is superseded: `compact` moves it out of
the shards into the hidden ledger, `.caption/superseded-N.ledger` (Parquet, the shards'
schema), rather than deleting it. So the folder's cost and tokens, `caption status`, the
report and the budget cap count every attempt that was paid for, and its lineage is kept.

Crash safety: the ledger file is written (temporary name, rename) before the shards are
rewritten, and a row already in the ledger is never added again, so a crash at any point
leaves at worst a superseded row in both places; `scan` counts it once, and the next
compaction removes it from the shards. A row that is an exact copy of another (a shard
copied into the folder twice) is the same attempt, not a new one: dropped, not ledgered.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UsageError, storage_error
from pipeline.io.arrow import bool_array, bool_numpy, combined, equals, read_parquet, take_indices
from pipeline.io.idlookup import IdLookup
from pipeline.io.idparts import IdParts
from pipeline.output.journal import read_journal
from pipeline.output.layout import LEDGER_GLOB, TMP_SUFFIX, ledger_name
from pipeline.output.marks import ERROR, OK
from pipeline.output.totals import read_totals, totals_of
from pipeline.output.writer import stage_parquet, write_parquet_atomic
from pipeline.records import Totals

if TYPE_CHECKING:
    from pipeline.output.folder import OutputDir

log = logging.getLogger(__name__)

_TOTALS = ["cost_usd", "prompt_tokens", "completion_tokens"]
_THREADS = min(4, os.cpu_count() or 1)  # shards rewritten at once by compaction


@dataclass(slots=True)
class Done:
    """What the output folder already holds, by id, and what it has cost."""

    # Every current row's id, its payload `marks.OK` or `marks.ERROR`: in memory while
    # few, on disk by partition past that (`io/idparts.py`).
    ids: IdParts = field(default_factory=lambda: IdParts(np.uint8))
    ok: int = 0
    errors: int = 0
    rows: int = 0  # current rows (one per id)
    cost_usd: float = 0.0  # every paid attempt: current rows and superseded ones
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    journaled: int = 0
    superseded: int = 0  # attempts replaced by a later answer, kept in the ledger

    def totals(self) -> Totals:
        return Totals(
            self.ok, self.errors, self.prompt_tokens, self.completion_tokens, self.cost_usd
        )

    def id_array(self, ok_only: bool = False) -> pa.Array:
        """The ids (only those answered ok, with `ok_only`) as one array in memory: for
        matching rows that are not the folder's manifest (an estimate's sources)."""
        found = []
        for part in self.ids.parts():
            if len(part):
                ids = part.ids()
                found.append(ids.filter(bool_array(part.payload == OK)) if ok_only else ids)
        return pa.concat_arrays(found) if found else pa.nulls(0, pa.string())


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A result shard (or ledger file), or a UsageError naming it when it is not
    readable Parquet."""
    try:
        return read_parquet(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(
            f"{path}: corrupt result shard ({exc}); move it out of the folder to send its "
            "rows again, or restore it from a backup"
        ) from None


def ledger_files(out: OutputDir) -> list[Path]:
    return sorted(out.state.glob(LEDGER_GLOB))


def _keys(table: pa.Table) -> pa.Array:
    """One value per attempt: its id and the moment it finished."""
    ms = pc.cast(pc.cast(table["finished_at"], pa.int64()), pa.string())
    return combined(pc.binary_join_element_wise(table["id"], pc.fill_null(ms, "-"), "@"))


def _unique_attempts(table: pa.Table) -> pa.Table:
    """`table` with exact copies of an attempt (same id, same finish) dropped."""
    if pc.count_distinct(table["id"]).as_py() == table.num_rows:
        return table  # the common case: one row per id, nothing to look at
    keyed = table.append_column("_key", _keys(table)).append_column(
        "_row", pa.array(np.arange(table.num_rows))
    )
    first = keyed.group_by("_key", use_threads=False).aggregate([("_row", "min")])
    return table.take(pc.sort_indices(first["_row_min"]))


# -- what is done -------------------------------------------------------------------------


def scan(out: OutputDir, include_journals: bool = False, compacted: bool = False) -> Done:
    """Ids answered ok or with an error, and the spend so far (ledger included). Reads
    only the columns it needs, a shard at a time: memory holds one shard, and the ids
    until they are many enough to go to disk (`Done.ids`). With `include_journals`, rows
    still in a killed run's journal count too (read-only: nothing is folded).
    `compacted`: the caller has just run `compact`, so no id is in the shards twice and
    that check is not made again."""
    columns = ["id", "status", *_TOTALS, "error_kind", "finished_at"]
    ledger = _ledger(out, columns)
    done = Done()
    for shard in out.shards():
        counted = read_totals(shard)
        if counted is None:  # an older shard: its totals are counted from its rows
            _add(done, totals_of(table := read_shard(shard, columns=columns)), table)
        else:  # its footer has them: only its ids and statuses are read
            _add(done, counted, read_shard(shard, columns=["id", "status"]))
    for core in _journal_tables(out, columns, include_journals):
        done.journaled += core.num_rows
        _add(done, totals_of(core), core)
    if len(done.ids) and not compacted and len(repeated := done.ids.repeated()):
        # An id twice: an attempt not compacted yet (a compaction cut short, a retried
        # Ray block) or a shard copied twice. Rare: counted again, those ids with care.
        done.ids.close()
        return _scan_repeated(out, columns, include_journals, ledger, repeated)
    return _with_ledger(done, ledger)


def _journal_tables(out: OutputDir, columns: list[str], include: bool) -> Iterator[pa.Table]:
    if not include:
        return
    for journal in out.journals():
        yield read_journal(journal, out.result_schema()).select(columns)


def _add(done: Done, counted: dict[str, Any], ids: pa.Table) -> None:
    """One shard into the running totals: its `counted` totals (`output/totals.py`) and
    its ids (`id`, `status`)."""
    is_ok = bool_numpy(equals(ids["status"], "ok"))
    done.ids.add(ids["id"], np.where(is_ok, OK, ERROR))
    ok = int(is_ok.sum())
    done.ok += ok
    done.errors += ids.num_rows - ok
    done.rows += counted["rows"]
    done.cost_usd += counted["cost_usd"]
    done.prompt_tokens += counted["prompt_tokens"]
    done.completion_tokens += counted["completion_tokens"]
    for kind, n in counted["errors_by_kind"].items():
        done.errors_by_kind[kind] = done.errors_by_kind.get(kind, 0) + n


def _scan_repeated(
    out: OutputDir,
    columns: list[str],
    include_journals: bool,
    ledger: pa.Table,
    repeated: pa.Array,
) -> Done:
    """`scan` when the ids `repeated` are there more than once: their rows are set aside
    (a small table, however big the folder), exact copies of an attempt dropped and
    attempts already in the ledger left out (counted there); every other row counts as
    `scan` counts it, a shard at a time."""
    wanted = IdLookup(repeated)
    done = Done()
    aside: list[pa.Table] = []
    shards = ((False, read_shard(shard, columns=columns)) for shard in out.shards())
    journals = ((True, core) for core in _journal_tables(out, columns, include_journals))
    for journaled, table in itertools.chain(shards, journals):  # one table at a time
        done.journaled += table.num_rows if journaled else 0
        theirs = wanted.contains(table["id"])
        if theirs.any():
            aside.append(table.filter(bool_array(theirs)))
            table = table.filter(bool_array(~theirs))
        _add(done, totals_of(table), table)
    table = _unique_attempts(pa.concat_tables(aside, promote_options="permissive"))
    if ledger.num_rows:
        # A ledgered row still in a shard (a compaction cut short) is history: counted
        # once, there, and not as a current row.
        table = table.filter(pc.invert(pc.is_in(_keys(table), value_set=_keys(ledger))))
    _add(done, totals_of(table), table)
    return _with_ledger(done, ledger)


def _ledger(out: OutputDir, columns: list[str]) -> pa.Table:
    tables = [read_shard(p, columns=columns) for p in ledger_files(out)]
    if not tables:
        return pa.table({c: pa.nulls(0) for c in columns})
    return _unique_attempts(pa.concat_tables(tables, promote_options="permissive"))


def _with_ledger(done: Done, ledger: pa.Table) -> Done:
    if ledger.num_rows:
        done.superseded = ledger.num_rows
        done.cost_usd += pc.sum(ledger["cost_usd"]).as_py() or 0.0
        done.prompt_tokens += pc.sum(ledger["prompt_tokens"]).as_py() or 0
        done.completion_tokens += pc.sum(ledger["completion_tokens"]).as_py() or 0
    return done


# -- compaction ---------------------------------------------------------------------------


def settle(out: OutputDir) -> Done:
    """`compact`, then `scan`: a run's start. In one pass over the shards' ids when no id
    is there twice (the common case), in three when one is."""
    done = scan(out, compacted=True)
    repeated = done.ids.repeated()
    if not len(repeated):
        return done
    done.ids.close()
    compact(out, repeated)
    return scan(out, compacted=True)


def compact(out: OutputDir, repeated: pa.Array | None = None) -> int:
    """Keep one row per id in the shards: the newest (an `ok` beats an `error` of the same
    moment). Superseded rows move to the ledger; exact copies are dropped. Each shard
    holding either is rewritten without them (temporary name, then rename). Returns the
    number of rows taken out of the shards. `repeated`: the ids there twice, when the
    caller has them."""
    shards = out.shards()
    if repeated is None:
        ids = scan(out, compacted=True).ids  # the shards' ids, as a run's start reads them
        repeated = ids.repeated()
        ids.close()
    if not len(repeated):
        return 0  # the common case: nothing superseded, nothing more to read
    # Only the rows of repeated ids, with where they are: a small table, read a shard at
    # a time, however big the folder.
    wanted = IdLookup(repeated)
    reads = []
    for number, shard in enumerate(shards):
        t = read_shard(shard, columns=["id", "status", "finished_at"])
        rows = np.flatnonzero(wanted.contains(t["id"]))
        if len(rows):
            reads.append(
                t.take(pa.array(rows))
                .append_column("shard", pa.array(np.full(len(rows), number)))
                .append_column("row", pa.array(rows))
            )
    table = pa.concat_tables(reads, promote_options="permissive")
    ranked = table.append_column("is_ok", equals(table["status"], "ok")).sort_by(
        [("id", "ascending"), ("finished_at", "descending"), ("is_ok", "descending")]
    )
    ids, keys = combined(ranked["id"]), _keys(ranked)
    n = ranked.num_rows
    # Ranked rows after the first of their id are out; those equal to the row before them
    # (same id and finish) are copies of it, not attempts of their own.
    later = np.zeros(n, dtype=bool)
    copy = np.zeros(n, dtype=bool)
    later[1:] = pc.equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    copy[1:] = pc.equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)
    known = _ledger(out, ["id", "finished_at"])
    if known.num_rows:
        copy |= pc.is_in(keys, value_set=_keys(known)).to_numpy(zero_copy_only=False)
    out_shard = ranked["shard"].to_numpy()[later]
    out_row = ranked["row"].to_numpy()[later]
    to_ledger = (later & ~copy)[later]
    drop: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in np.unique(out_shard):
        mine = out_shard == i
        drop[int(i)] = (out_row[mine], out_row[mine & to_ledger])
    # Each shard is read once, in threads (Arrow reads and writes without the GIL): its
    # superseded rows kept for the ledger, the rest staged under a temporary name. Only
    # once the ledger is written are the staged shards renamed over the old ones; a crash
    # before that leaves temporaries, which `recover` removes.
    staged: list[tuple[Path, Path | None, pa.Table, int]] = []
    try:
        with ThreadPoolExecutor(_THREADS) as pool:
            staged.extend(pool.map(lambda item: _stage(shards[item[0]], *item[1]), drop.items()))
        history = [h for _, _, h, _ in staged if h.num_rows]
        if history:
            _write_ledger(out, pa.concat_tables(history, promote_options="permissive"))
    except BaseException:
        for _, tmp, _, _ in staged:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        raise
    removed = 0
    for shard, tmp, _, taken in staged:
        try:
            if tmp is None:
                shard.unlink()
            else:
                os.replace(tmp, shard)
        except OSError as exc:
            raise storage_error(out.path, exc) from None
        removed += taken
    ledgered = sum(h.num_rows for h in history)
    log.info(
        "compacted: %d superseded row(s) moved to the ledger, %d copies dropped",
        ledgered,
        removed - ledgered,
    )
    return removed


def _stage(
    shard: Path, rows: np.ndarray, history: np.ndarray
) -> tuple[Path, Path | None, pa.Table, int]:
    """`shard` without `rows`, staged under a temporary name (None: no row left), and
    its `history` rows, for the ledger: (shard, staged, history, rows taken out)."""
    data = read_shard(shard)
    keep = np.ones(data.num_rows, dtype=bool)
    keep[rows] = False
    kept = data.filter(bool_array(keep))
    tmp = stage_parquet(kept, shard) if kept.num_rows else None
    return shard, tmp, data.take(take_indices(history)), data.num_rows - kept.num_rows


def _write_ledger(out: OutputDir, rows: pa.Table) -> Path:
    numbers = [int(p.name.split("-")[1].split(".")[0]) for p in ledger_files(out)]
    path = out.state / ledger_name(max(numbers, default=-1) + 1)
    # The temporary file sits beside it in `.caption/`, where `recover` removes leftovers.
    write_parquet_atomic(rows, path, tmp=path.with_name(path.name + TMP_SUFFIX))
    return path
