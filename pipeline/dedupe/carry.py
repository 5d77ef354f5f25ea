"""Followers given their leader's answer (`plan.py`), once the leader has one.

A copy is an ordinary `ok` row of the follower's id and source, with the leader's answer
and response metadata, `dedupe_of` naming the image whose answer it carries (the leader's
own `dedupe_of` when the leader is itself a copy), and no cost, tokens or attempts of its
own: it was never sent. Copies are written as whole shards (temporary name, rename), so a
run killed before they land leaves the followers pending, and the next run carries them.
A follower whose leader has no ok answer (an error row, or not sent: the run stopped)
stays pending: the next run sends its group's next row.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedupe.plan import NearPlan
from pipeline.io.arrow import bool_array, take_indices
from pipeline.io.idlookup import IdLookup
from pipeline.output.books import read_shard
from pipeline.output.folder import OutputDir
from pipeline.output.writer import next_sequence, write_parquet_atomic
from pipeline.records import MANIFEST_ID, MANIFEST_SOURCE

log = logging.getLogger(__name__)

DEDUPE_OF = "dedupe_of"
# Per-request columns a copy does not have: it was never sent.
_ZERO = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")
_NULL = (
    "usage_source",
    "latency_s",
    "http_status",
    "image_width",
    "image_height",
    "source_sha256",  # the bytes answered were the leader's, not these
)


def leader_answers(out: OutputDir, leader_ids: pa.Array) -> pa.Table | None:
    """The ok rows of the folder whose id is a leader's (one per id, the newest)."""
    lookup = IdLookup(leader_ids)
    parts = []
    for shard in out.shards():
        ids = read_shard(shard, columns=[MANIFEST_ID, "status"])
        wanted = lookup.contains(ids[MANIFEST_ID]) & np.asarray(
            pc.equal(ids["status"], "ok").to_numpy(zero_copy_only=False), dtype=bool
        )
        if wanted.any():
            parts.append(read_shard(shard).filter(bool_array(wanted)))
    if not parts:
        return None
    rows = pa.concat_tables(parts, promote_options="permissive")
    newest = pc.sort_indices(rows, [(MANIFEST_ID, "ascending"), ("finished_at", "descending")])
    rows = rows.take(newest)
    ids = rows[MANIFEST_ID].combine_chunks()
    first = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        first[1:] = np.asarray(
            pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
        )
    return rows.filter(bool_array(first))


def carry_answers(out: OutputDir, plan: NearPlan, rows_per_shard: int) -> int:
    """Write each follower whose leader has an ok answer as a copy of it. Returns how many."""
    if not plan.followers:
        return 0
    answers = leader_answers(out, plan.leader_ids)
    if answers is None:
        return 0
    at = IdLookup(answers[MANIFEST_ID]).positions(plan.leader_ids)
    has = at >= 0
    if not has.any():
        return 0
    copies = answers.take(take_indices(at[has]))
    keep = bool_array(has)
    copies = _as_copies(copies, plan.follower_ids.filter(keep), plan.follower_sources.filter(keep))
    sequence = next_sequence(out.path)
    for start in range(0, copies.num_rows, rows_per_shard):
        target = out.path / f"part-{sequence:05d}.parquet"
        write_parquet_atomic(copies.slice(start, rows_per_shard), target)
        sequence += 1
    log.info("%d near-copies carry their group's answer (--dedupe near)", copies.num_rows)
    return copies.num_rows


def _as_copies(answers: pa.Table, ids: pa.Array, sources: pa.Array) -> pa.Table:
    """The leaders' rows, made the followers' copies."""
    now = pa.scalar(datetime.now(UTC), pa.timestamp("ms", tz="UTC"))
    n = answers.num_rows
    of = pc.coalesce(answers[DEDUPE_OF], answers[MANIFEST_ID])
    columns = {}
    for field in answers.schema:
        name = field.name
        if name == MANIFEST_ID:
            columns[name] = ids
        elif name == MANIFEST_SOURCE:
            columns[name] = sources
        elif name == DEDUPE_OF:
            columns[name] = of
        elif name in _ZERO or name == "attempts":
            columns[name] = pa.array(np.zeros(n, dtype=np.int64)).cast(field.type)
        elif name == "cost_usd":
            columns[name] = pa.array(np.zeros(n))
        elif name in _NULL:
            columns[name] = pa.nulls(n, field.type)
        elif name == "finished_at":
            columns[name] = pa.array([now] * n, field.type)
        else:
            columns[name] = answers[name]
    return pa.table(columns, schema=answers.schema)
