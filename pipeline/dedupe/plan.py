"""Which rows are sent and which carry another image's answer, under `--dedupe near`.

Rows whose hashes are within the distance (`groups.py`) form a group. For each group with
rows still to answer, its *leader* is the group's first row (in manifest order) that
already has an answer (last night's, say), else its first row still to answer, which is
sent. Every other row still to answer *follows* the leader: it is not sent, and once the
leader's answer is there it is copied to the follower (`carry.py`). Groups are found
afresh on every run, from hashes kept in the manifest, so a new near-copy of an image
answered on an earlier night carries that answer without a request.

Only pairs that touch a row still to answer are searched: a nightly run over a large
folder costs what its new rows cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dedupe.groups import components, near_pairs
from pipeline.dedupe.ingest import HASH_COLUMNS
from pipeline.io.arrow import bool_array, combined, take_indices
from pipeline.io.idlookup import IdLookup
from pipeline.io.rowbits import RowBits
from pipeline.records import MANIFEST_ID, MANIFEST_SOURCE, NEAR_ACROSS, NEAR_DOWN


@dataclass(frozen=True, slots=True)
class NearPlan:
    """Followers (id, source) and the id of the leader each carries the answer of."""

    follower_ids: pa.Array
    follower_sources: pa.Array
    leader_ids: pa.Array
    groups: int  # groups with a row to answer and more than one row
    follower_rows: np.ndarray  # where the followers are among the rows planned

    @property
    def followers(self) -> int:
        return len(self.follower_ids)


def empty_plan() -> NearPlan:
    none = pa.nulls(0, pa.string())  # (`pa.array([])` would import pandas)
    return NearPlan(none, none, none, 0, np.empty(0, dtype=np.int64))


def leaders(labels: np.ndarray, answered: np.ndarray, pending: np.ndarray) -> np.ndarray:
    """Each row's group leader (a row index): the group's first answered row, else its
    first pending row (rows are in manifest order). A row that is neither (an error row
    not being retried) never leads: nothing would answer for it."""
    rows = np.arange(len(labels))
    rank = np.where(answered, 0, np.where(pending, 1, 2))
    # Sorted by group, then rank, then position: each group's first row is its leader.
    order = np.lexsort((rows, rank, labels))
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    leader_of_label = np.empty(len(labels), dtype=np.int64)
    leader_of_label[labels[order][first]] = order[first]
    out: np.ndarray = leader_of_label[labels]
    # Only pending rows follow; the others are their own leaders.
    return np.where(pending, out, rows)


def plan_rows(
    ids: pa.Array,
    sources: pa.Array,
    across: pa.Array,
    down: pa.Array,
    answered: np.ndarray,
    pending: np.ndarray,
    distance: int,
) -> NearPlan:
    """The plan for rows in manifest order, given which are answered and which pending.
    Rows with null hashes (URLs, unreadable files) are in no group."""
    hashed = ~np.asarray(across.is_null().to_numpy(zero_copy_only=False))
    where = np.flatnonzero(hashed)
    h = across.filter(bool_array(hashed)).to_numpy()
    c = down.filter(bool_array(hashed)).to_numpy()
    asks = np.flatnonzero(pending[where])
    pairs = near_pairs(h, c, distance, queries=asks)
    labels = components(len(where), pairs)
    lead = leaders(labels, answered[where], pending[where])
    follows = pending[where] & (lead != np.arange(len(where)))
    if not follows.any():
        return empty_plan()
    rows = where[follows]
    leader_rows = where[lead[follows]]
    return NearPlan(
        follower_ids=ids.take(take_indices(rows)),
        follower_sources=sources.take(take_indices(rows)),
        leader_ids=ids.take(take_indices(leader_rows)),
        groups=len(np.unique(lead[follows])),
        follower_rows=rows,
    )


def plan_manifest(manifest: Path, answered: RowBits, skip: RowBits, distance: int) -> NearPlan:
    """The plan for a folder's manifest, by manifest row: rows in `skip` are not pending
    (done, and not to be sent again); `answered` rows have an answer to carry."""
    names = pq.read_schema(manifest).names
    if not all(c in names for c in HASH_COLUMNS):
        return empty_plan()
    table = pq.read_table(manifest, columns=[MANIFEST_ID, MANIFEST_SOURCE, *HASH_COLUMNS])
    pending = ~skip.window(0, skip.rows)
    return _plan_table(table, answered.window(0, answered.rows) & ~pending, pending, distance)


def plan_batches(
    batches: Iterable[pa.RecordBatch], answered_ids: pa.Array, skip: pa.Array, distance: int
) -> NearPlan:
    """The plan for manifest batches that carry hashes (an estimate's): rows whose id is
    in `skip` are not pending; `answered_ids` have an answer to carry."""
    table = pa.Table.from_batches(list(batches))
    if table.num_rows == 0 or not all(c in table.column_names for c in HASH_COLUMNS):
        return empty_plan()
    ids = combined(table[MANIFEST_ID])
    answered = IdLookup(answered_ids).contains(ids) if len(answered_ids) else _none(ids)
    pending = ~IdLookup(skip).contains(ids) if len(skip) else ~_none(ids)
    return _plan_table(table, answered & ~pending, pending, distance)


def _plan_table(
    table: pa.Table, answered: np.ndarray, pending: np.ndarray, distance: int
) -> NearPlan:
    return plan_rows(
        combined(table[MANIFEST_ID]),
        combined(table[MANIFEST_SOURCE]),
        combined(table[NEAR_ACROSS]),
        combined(table[NEAR_DOWN]),
        answered,
        pending,
        distance,
    )


def _none(ids: pa.Array) -> np.ndarray:
    return np.zeros(len(ids), dtype=bool)
