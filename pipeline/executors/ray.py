"""The Ray executor: one job, many workers, one account.

The driver (this process) has already recovered, compacted and scanned the output folder
(`jobs/run.py`, as for the local executor). It splits the pending rows into blocks and runs
one Ray task per block, at most `workers` at once. A task runs the same unit of work as
the local executor (`work.caption_rows`) with its own HTTP session and its own shard names
(`part-r<block>-N`; `raytask.py` is the task's side), and takes its send times and its budget from one named actor holding
the job's account (`executors/account.py`, leased in small batches: `executors/leased.py`). So the rate
limits, the 429 back-off and the budget cap are global, not per worker.

A task whose worker process dies (`kill -9`, a lost node) is retried by Ray. The retry
first folds the journals the dead attempt left and skips the rows they hold: only rows
that were in flight are sent again. The driver recovers the folder again at the end, and
rerunning the command resumes a killed driver like any run.

In a bucket folder each task writes its block to the bucket itself (its node may not see
this machine's mirror) and the driver pulls the run's files at the end. When the folder's
lock is being lost (`Work.on_lost`), the account stops leasing, so every task stops
sending after the rows it holds; a task whose shards the bucket did not take hands them
to the driver, which keeps them in its mirror.

Ray's own HTTP stage for LLM batches is not used: its rate is per actor and resets every
batch, it ignores Retry-After, and a failed block is sent again whole.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.engine.work import StopReason, Tally
from pipeline.errors import UsageError
from pipeline.executors.account import Account
from pipeline.executors.base import Executed, Work
from pipeline.executors.progress import TotalsBar
from pipeline.executors.raytask import run_block
from pipeline.executors.spec import ExecutorSpec
from pipeline.io import storage
from pipeline.io.storage import is_remote
from pipeline.output import books
from pipeline.output.folder import OutputDir
from pipeline.output.layout import block_prefix
from pipeline.output.mirror import ACTIVE, sync_every_s
from pipeline.output.writer import write_parquet_atomic
from pipeline.records import ManifestRow

log = logging.getLogger(__name__)

INTERRUPT_GRACE_S = 10.0
TASK_RETRIES = 3


def is_remote_cluster(address: str | None) -> bool:
    """Whether `address` names a cluster beyond this machine (so its nodes do not see
    this machine's files). A head started here is reached by one of this machine's own
    addresses (Ray gives its node's IP, not 127.0.0.1): one this machine can bind to."""
    if address in (None, "", "local", "auto"):
        return False
    host = urlparse(address if "://" in address else f"ray://{address}").hostname
    if host in ("127.0.0.1", "localhost", "::1", None):
        return False
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
        return False
    except OSError:
        return True


def check_cluster(spec: ExecutorSpec, output: str, sources: list[str]) -> None:
    """Refuse, before anything is sent, a job whose files a remote cluster cannot see."""
    if not is_remote_cluster(spec.address):
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


# Ray 2.5x announces, on every new local cluster, that it enabled token authentication
# (the secure default); to a caption user it is noise about a cluster caption owns.
_TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


def _init(spec: ExecutorSpec) -> ModuleType:
    import ray

    if not ray.is_initialized():
        announcer = logging.getLogger(_TOKEN_SETUP_LOGGER)
        level = announcer.level
        if spec.address is None:  # a cluster of our own: its auth is not the user's concern
            announcer.setLevel(logging.ERROR)
        try:
            ray.init(
                address=spec.address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                ignore_reinit_error=True,
            )
        finally:
            announcer.setLevel(level)
    return ray


def _blocks(rows: Iterator[ManifestRow], size: int) -> Iterator[list[dict[str, Any]]]:
    while block := list(itertools.islice(rows, size)):
        yield [{"id": r.id, "source": r.source, **r.extra} for r in block]


class RayExecutor:
    def __init__(self, spec: ExecutorSpec) -> None:
        self.spec = spec

    def check(self, output: str, sources: list[str]) -> None:
        check_cluster(self.spec, output, sources)

    def run(self, work: Work) -> Executed:
        executed = execute(work, self.spec)
        work.out.recover()  # journals of tasks that ended without folding (an interrupt)
        books.compact(work.out)  # a row two attempts of a block both answered: kept once
        return executed


def execute(work: Work, spec: ExecutorSpec) -> Executed:
    """Run the pending rows on Ray, one task per block, at most `workers` at once."""
    config, out, budget, on_lost = work.config, work.out, work.budget, work.on_lost
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
    size = max(16, min(1000, math.ceil(work.total / (workers * 4))))
    tally, stop, unsaved = Tally(), StopReason(), 0
    bar = TotalsBar(work.total) if work.show_progress else None
    blocks = enumerate(_blocks(work.rows, size))
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
                    work.api_key,
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
                tally += part.tally
                unsaved += part.unsaved
                _keep(out, part.handed)
                if part.stop[0] == "storage":
                    lost.append(part.stop[1])  # the bucket failed a task: stop them all
                elif part.stop[0]:
                    stop.set(part.stop[0], part.stop[1])
                    budget.refused_usd = max(budget.refused_usd, part.stop[2])
            if bar is not None:
                bar.draw(ray.get(account.progress.remote()))
    except KeyboardInterrupt:
        stop.set("interrupted", "interrupted by SIGINT")
        ray.get(account.stop.remote("interrupted", "interrupted by SIGINT"))
        done, late = ray.wait(
            list(in_flight), num_returns=len(in_flight), timeout=INTERRUPT_GRACE_S
        )
        for ref in done:
            part = ray.get(ref)
            tally += part.tally
            unsaved += part.unsaved
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
        bucket.pull(only=f"{block_prefix(run)}-")
    return Executed(tally, stop, unsaved)


def _keep(out: OutputDir, handed: list[tuple[str, bytes]]) -> None:
    """Shards a task could not push to the bucket, kept in the driver's mirror (whose
    unpushed rows are never deleted, and go up with the next push or run)."""
    for name, data in handed:
        target = out.path / name
        if not target.exists():
            write_parquet_atomic(pq.read_table(pa.BufferReader(data)), target)
            log.warning("kept %s, which the bucket did not take, in the local mirror", name)
