"""The Ray executor: one job, many workers, one account.

The driver (this process) has already recovered, compacted and scanned the output folder
(`engine/runner.py`, as for the local executor). It splits the pending rows into blocks and runs
one Ray task per block, at most `workers` at once. A task runs the same unit of work as
the local executor (`work.caption_rows`) with its own HTTP session and its own shard names
(`part-r<block>-N`), and takes its send times and its budget from one named actor holding
the job's account (`executors/account.py`, leased in small batches: `executors/leased.py`). So the rate
limits, the 429 back-off and the budget cap are global, not per worker.

A task whose worker process dies (`kill -9`, a lost node) is retried by Ray. The retry
first folds the journals the dead attempt left and skips the rows they hold: only rows
that were in flight are sent again. The driver recovers the folder again at the end, and
rerunning the command resumes a killed driver like any run.

Ray's own HTTP stage for LLM batches is not used: its rate is per actor and resets every
batch, it ignores Retry-After, and a failed block is sent again whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config.identity import job_definition
from pipeline.config.settings import JobConfig
from pipeline.engine.budget import Budget
from pipeline.engine.labels import result_schema
from pipeline.engine.work import StopReason, Tally, caption_rows
from pipeline.errors import StorageError, UsageError
from pipeline.executors import ExecutorSpec
from pipeline.executors.account import Account
from pipeline.executors.leased import LeaseClient, LeasedBudget, LeasedLimiter
from pipeline.executors.local import open_captioner
from pipeline.output import storage
from pipeline.output.books import read_shard
from pipeline.output.folder import OutputDir
from pipeline.output.mirror import ACTIVE, BucketFolder, sync_every_s
from pipeline.output.storage import is_remote
from pipeline.output.writer import JOURNAL_SUFFIX, ShardWriter, fold_journal, write_parquet_atomic
from pipeline.records import ManifestRow, ResultRow

log = logging.getLogger(__name__)

INTERRUPT_GRACE_S = 10.0
TASK_RETRIES = 3
SAVED_COLUMNS = [
    "id",
    "status",
    "error_kind",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "usage_source",
]


def is_remote_cluster(address: str | None) -> bool:
    """Whether `address` names a cluster beyond this machine (so its nodes do not see
    this machine's files)."""
    if address in (None, "", "local", "auto"):
        return False
    host = urlparse(address if "://" in address else f"ray://{address}").hostname
    return host not in ("127.0.0.1", "localhost", "::1", None)


def check_cluster(spec: ExecutorSpec, output: str, sources: list[str]) -> None:
    """Refuse, before anything is sent, a job whose files a remote cluster cannot see."""
    if spec.kind != "ray" or not is_remote_cluster(spec.address):
        return
    local_images = [
        s for s in sources if not is_remote(s) and not s.startswith(("http://", "https://"))
    ]
    if spec.shared_fs or (is_remote(output) and not local_images):
        return  # every node sees the files: a shared path, or buckets and URLs
    if is_remote(output):
        raise UsageError(
            f"--ray-address {spec.address}: the images of {local_images[0]} are on this "
            "machine, which the cluster's nodes do not see; put them in a bucket (s3://, "
            "gs://) or on a path every node mounts and add --shared-fs"
        )
    images = (
        f", and the images of {local_images[0]} are on this machine too (a bucket, s3:// "
        "or gs://, needs no shared path)"
        if local_images
        else ""
    )
    raise UsageError(
        f"--ray-address {spec.address}: the output folder {output} is a local path, which "
        f"the cluster's nodes do not see{images}; use a path every node mounts and add "
        "--shared-fs"
    )


WORKERS_LOCK = "workers.lock"
WAIT_FOR_WORKERS_S = 120.0


@contextmanager
def workers_lock(out: OutputDir, how: int) -> Iterator[None]:
    """Every Ray task holds this lock shared while it writes the folder."""
    fd = os.open(out.state / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)


def wait_for_workers(out: OutputDir) -> None:
    """Before a run touches the folder: the tasks of an earlier Ray run whose driver was
    killed may still be writing it for a few seconds (Ray stops them once it notices).
    Wait until none holds the workers' lock."""
    path = out.state / WORKERS_LOCK
    if not path.exists():
        return
    fd = os.open(path, os.O_RDWR)
    try:
        deadline = time.monotonic() + WAIT_FOR_WORKERS_S
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UsageError(
                        f"{out.label}: Ray workers of an earlier run still write to it after "
                        f"{WAIT_FOR_WORKERS_S:.0f} s; stop them (ray stop) and run again"
                    ) from None
                if not said:
                    log.warning("waiting for the Ray workers of an earlier run to stop")
                    said = True
                time.sleep(0.2)
    finally:
        os.close(fd)  # releases the lock: this run's tasks take it shared


def _init(spec: ExecutorSpec) -> Any:
    import ray

    if not ray.is_initialized():
        ray.init(
            address=spec.address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            ignore_reinit_error=True,
        )
    return ray


def _blocks(rows: Iterator[ManifestRow], size: int) -> Iterator[list[dict[str, Any]]]:
    while block := list(itertools.islice(rows, size)):
        yield [{"id": r.id, "source": r.source, **r.extra} for r in block]


def execute(
    config: JobConfig,
    out: OutputDir,
    rows: Iterator[ManifestRow],
    api_key: str,
    budget: Budget,
    total: int,
    show_progress: bool,
    spec: ExecutorSpec,
    on_lost: list[Callable[[str], None]] | None = None,
) -> tuple[Tally, StopReason, int]:
    """Run the pending `rows` on Ray; what they did, why the run stopped, rows unsaved.
    Through `on_lost` a bucket folder's mirror tells the run (from its own thread) that
    the folder's lock is being lost: the account stops leasing, so every task stops
    sending after the rows it holds."""
    ray = _init(spec)
    lost: list[str] = []  # appended from the mirror's thread, read by the loop below
    if on_lost is not None:
        on_lost.append(lost.append)
    workers = spec.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    limits = config.limits
    account = (
        ray.remote(Account)
        .options(name=f"caption-account-{uuid.uuid4().hex[:12]}", num_cpus=0)
        .remote(
            limits.rpm, limits.tpm, limits.max_cost_usd, budget.spent_usd, limits.max_retry_after
        )
    )
    task = ray.remote(run_block).options(num_cpus=1, max_retries=TASK_RETRIES)
    run = uuid.uuid4().hex[:6]  # in shard names: a block's retries find their journals
    # A bucket folder: each task writes its block there itself (its node may not see
    # this machine's mirror); the driver pulls the run's files at the end.
    bucket = ACTIVE.get(out.path) if is_remote(out.label) else None
    target = bucket.url if bucket is not None else str(out.path)
    storage_options = storage.options()  # --storage-options, for the tasks' buckets too
    per_worker = max(1, math.ceil(limits.concurrency / workers))
    size = max(16, min(1000, math.ceil(total / (workers * 4))))
    tally, stop, unsaved = Tally(), StopReason(), 0
    bar = _bar(total) if show_progress else None
    blocks = enumerate(_blocks(rows, size))
    in_flight: dict[Any, int] = {}
    told = False  # the account was told that the folder's lock is being lost
    try:
        while True:
            while not stop.kind and len(in_flight) < workers:
                item = next(blocks, None)
                if item is None:
                    break
                number, block = item
                ref = task.remote(
                    f"{run}-{number:05d}",
                    block,
                    config,
                    api_key,
                    target,
                    account,
                    per_worker,
                    storage_options,
                    sync_every_s(),
                )
                in_flight[ref] = number
            if not in_flight:
                break
            if lost and not told:
                told = True
                stop.set("storage", lost[0])
                ray.get(account.stop.remote("storage", lost[0]))
                continue  # no new block: see what the tasks hand back
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in done:
                del in_flight[ref]
                part = ray.get(ref)
                tally = _merge(tally, part.tally)
                unsaved += part.unsaved
                _keep(out, part.handed)
                if part.stop[0] == "storage":
                    lost.append(part.stop[1])  # the bucket failed a task: stop them all
                elif part.stop[0]:
                    stop.set(part.stop[0], part.stop[1])
                    budget.refused_usd = max(budget.refused_usd, part.stop[2])
            if bar is not None:
                _draw(bar, ray.get(account.progress.remote()))
    except KeyboardInterrupt:
        stop.set("interrupted", "interrupted by SIGINT")
        ray.get(account.stop.remote("interrupted", "interrupted by SIGINT"))
        done, late = ray.wait(
            list(in_flight), num_returns=len(in_flight), timeout=INTERRUPT_GRACE_S
        )
        for ref in done:
            part = ray.get(ref)
            tally, unsaved = _merge(tally, part.tally), unsaved + part.unsaved
            _keep(out, part.handed)
        for ref in late:
            ray.cancel(ref, force=True)
    finally:
        if on_lost is not None:
            on_lost.remove(lost.append)
        if bar is not None:
            bar.close()
        ray.kill(account)
    budget.spent_usd += tally.cost_usd  # the driver's view, for the stop message
    if bucket is not None and not told:  # the bucket is gone: what it lacks was handed
        bucket.pull(only=f"part-r{run}-")
    return tally, stop, unsaved


def _keep(out: OutputDir, handed: list[tuple[str, bytes]]) -> None:
    """Shards a task could not push to the bucket, kept in the driver's mirror (whose
    unpushed rows are never deleted, and go up with the next push or run)."""
    for name, data in handed:
        target = out.path / name
        if not target.exists():
            write_parquet_atomic(pq.read_table(pa.BufferReader(data)), target)
            log.warning("kept %s, which the bucket did not take, in the local mirror", name)


def _merge(a: Tally, b: Tally) -> Tally:
    a.ok += b.ok
    a.errors += b.errors
    a.prompt_tokens += b.prompt_tokens
    a.completion_tokens += b.completion_tokens
    a.cost_usd += b.cost_usd
    a.usage_estimated += b.usage_estimated
    a.bytes_sent += b.bytes_sent
    for kind, n in b.errors_by_kind.items():
        a.errors_by_kind[kind] = a.errors_by_kind.get(kind, 0) + n
    for name in ("read", "reduced", "reduced_from", "reduced_to"):
        setattr(a.images, name, getattr(a.images, name) + getattr(b.images, name))
    return a


def _bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="img", dynamic_ncols=True)


def _draw(bar: Any, totals: dict[str, float]) -> None:
    done = int(totals.get("ok", 0) + totals.get("errors", 0))
    bar.update(done - bar.n)
    bar.set_postfix_str(
        f"errors={int(totals.get('errors', 0))} ${totals.get('cost_usd', 0.0):.4f} "
        f"429s={int(totals.get('rate_limited', 0))}"
    )


# -- in the worker -------------------------------------------------------------------------


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
            mirror = BucketFolder(out_path, Path(tmp) / "out", f"part-r{block}-", sync_s)
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
                    (p.name, p.read_bytes()) for p in sorted(mirror.local.glob(f"part-r{block}-*"))
                ]
            return result
    out = OutputDir(Path(out_path))
    with workers_lock(out, fcntl.LOCK_SH):  # a later run waits for this task to end
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
    prefix = f"part-r{block}"
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
    return BlockResult(_merge(tally, earlier), stop, unsaved)


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
