"""A Ray task of the Ray executor (`ray.py`): one block of rows captioned into shards
of its own (`part-r<run>-<block>-N`), with the send times and the budget leased from the
job's one account.

A retry of a block (its worker was killed) first folds the journals the dead attempt left
and skips the rows they hold, so only rows that were in flight are sent again; it counts
the rows the dead attempt saved, since this run paid for them. In a bucket folder a task
works on a mirror of its block alone; when the bucket fails, it hands the block's shards
to the driver, since its own disk is gone when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config.identity import job_definition
from pipeline.config.labels import result_schema
from pipeline.config.settings import JobConfig
from pipeline.engine.work import StopReason, Tally, caption_rows
from pipeline.errors import StorageError
from pipeline.executors.base import open_captioner
from pipeline.executors.leased import LeaseClient, LeasedBudget, LeasedLimiter
from pipeline.io import storage
from pipeline.io.storage import is_remote
from pipeline.output.books import read_shard
from pipeline.output.folder import OutputDir
from pipeline.output.layout import JOURNAL_SUFFIX, block_prefix
from pipeline.output.mirror import BucketFolder
from pipeline.output.writer import ShardWriter, fold_journal
from pipeline.records import ManifestRow, ResultRow

log = logging.getLogger(__name__)

SAVED_COLUMNS = [
    "id",
    "status",
    "error_kind",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "usage_source",
]


@dataclass(slots=True)
class BlockResult:
    """What a task did: its tally, why it stopped (kind, message, the budget it was
    refused), rows answered but unsaved, and shards the bucket did not take."""

    tally: Tally
    stop: tuple[str, str, float]
    unsaved: int
    handed: list[tuple[str, bytes]] = field(default_factory=list)


def run_block(
    block: str,
    rows: list[dict[str, Any]],
    config: JobConfig,
    api_key: str,
    out_path: str,
    account: Any,
    concurrency: int,
    storage_options: dict[str, Any] | None = None,
    sync_s: float | None = None,
) -> BlockResult:
    """Caption one block into shards of its own (a Ray task). A retry of the block first
    folds what the earlier attempt journaled, and skips the rows it answered. In a bucket
    folder the task works on a mirror of its block alone, pushed every few seconds; when
    the bucket fails, the block's shards go back to the driver instead (`handed`), since
    the task's disk is gone when it ends."""
    if storage_options:
        storage.configure(storage_options)
    if is_remote(out_path):
        with tempfile.TemporaryDirectory(prefix="caption-block-") as tmp:
            mirror = BucketFolder(out_path, Path(tmp) / "out", f"{block_prefix(block)}-", sync_s)
            result: BlockResult | None = None
            try:
                with mirror.task_session() as local:
                    out = OutputDir(local)
                    out.create()
                    result = _run_block(block, rows, config, api_key, out, account, concurrency)
                    if result.stop[0] == "storage":
                        raise StorageError(result.stop[1])  # no last push: hand them back
            except StorageError as exc:
                if result is None:
                    raise
                result.stop = ("storage", str(exc), 0.0)
                result.handed = [
                    (p.name, p.read_bytes())
                    for p in sorted(mirror.local.glob(f"{block_prefix(block)}-*"))
                ]
            return result
    out = OutputDir(Path(out_path))
    with out.workers_lock():  # a later run waits for this task to end
        return _run_block(block, rows, config, api_key, out, account, concurrency)


def _run_block(
    block: str,
    rows: list[dict[str, Any]],
    config: JobConfig,
    api_key: str,
    out: OutputDir,
    account: Any,
    concurrency: int,
) -> BlockResult:
    schema = result_schema(job_definition(config))  # a task's mirror holds no run.json
    prefix = block_prefix(block)
    for journal in sorted(out.state.glob(f"{prefix}-*{JOURNAL_SUFFIX}")):
        fold_journal(journal, schema)
    shards = sorted(out.path.glob(f"{prefix}-*.parquet"))
    # Rows an earlier attempt of this block answered (its worker was killed): not sent
    # again, and counted in this block's tally, since this run paid for them.
    earlier = Tally()
    done: set[str] = set()
    for shard in shards:
        saved = read_shard(shard, columns=SAVED_COLUMNS)
        done.update(saved.column("id").to_pylist())
        earlier.add_saved(saved)
    if done:
        log.info("block %s: %d row(s) answered by an earlier attempt", block, len(done))
    pending = [ManifestRow.from_dict(dict(r)) for r in rows if r["id"] not in done]
    writer = ShardWriter(
        out.path,
        config.output.rows_per_shard,
        first_sequence=len(shards),
        prefix=prefix,
        schema=schema,
    )
    worker = f"{os.getpid()}-{block}"
    tally, stop, unsaved = asyncio.run(
        _caption_block(pending, config, api_key, writer, account, concurrency, worker)
    )
    tally += earlier
    return BlockResult(tally, stop, unsaved)


async def _caption_block(
    rows: list[ManifestRow],
    config: JobConfig,
    api_key: str,
    writer: ShardWriter,
    account: Any,
    concurrency: int,
    worker: str,
) -> tuple[Tally, tuple[str, str, float], int]:
    async def lease(n: int, tokens: float, want: float, report: Any, need: float) -> Any:
        return await account.lease.remote(n, tokens, want, report, need)

    client = LeaseClient(worker, lease)
    stopping = asyncio.Event()
    limits = config.limits
    limiter = LeasedLimiter(client, concurrency, limits.max_retry_after)
    budget = LeasedBudget(limits.max_cost_usd, client)
    stop, tally = StopReason(), Tally()

    def progress(row: ResultRow, _tally: Tally) -> None:
        client.note(row)
        if client.stopped is not None:
            stopping.set()

    try:
        async with open_captioner(config, api_key, stopping, budget, limiter=limiter) as captioner:
            await caption_rows(
                rows,
                captioner,
                writer,
                workers=concurrency,
                stop=stop,
                progress=progress,
                tally=tally,
            )
    finally:
        writer.close()
        if stop.kind in ("fatal", "budget"):
            with contextlib.suppress(Exception):  # the account is gone: so is the run
                await account.stop.remote(stop.kind, stop.message)
        elif client.stopped is not None:
            stop.set(*client.stopped)
        await client.flush(returned_usd=max(budget.slice_usd, 0.0))
    return tally, (stop.kind, stop.message, budget.refused_usd), len(writer.unsaved)
