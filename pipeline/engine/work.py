"""The unit of work: manifest rows in, result rows out through a sink. Engine-agnostic:
an executor (`pipeline.executors`) decides where it runs and with which captioner.

Images are read and request bodies built in a thread, a chunk of rows at a time, so the
event loop never reads a file and pays for one hand-off per chunk rather than per row
(ARCHITECTURE.md, Speed). A chunk is 64 rows or 32 MB of bodies,
whichever comes first. At most `workers` rows are being sent (and as many more may wait
out a Retry-After), plus one chunk waiting and one being prepared: memory is flat in the
number of rows.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine.budget import BudgetReached, Stopping
from pipeline.engine.captioner import Captioner
from pipeline.engine.prepare import Prepared, Sizes
from pipeline.errors import FatalApiError, StorageError
from pipeline.output.writer import ResultSink
from pipeline.records import ManifestRow, ResultRow, Totals

CHUNK_ROWS = 64


@dataclass(slots=True)
class Tally(Totals):
    """What this run did: the totals, and what only a run knows."""

    errors_by_kind: dict[str, int] = field(default_factory=dict)
    usage_estimated: int = 0  # rows whose answer came without usage
    bytes_sent: int = 0  # request bodies, every attempt
    images: Sizes = field(default_factory=Sizes)  # image bytes read, and reduced

    def add(self, row: ResultRow) -> None:
        if row.status == "ok":
            self.ok += 1
        else:
            self.errors += 1
            kind = row.error_kind or "unknown"
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        if row.completion is not None:
            usage = row.completion.usage
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self.usage_estimated += not usage.reported
        self.cost_usd += row.cost_usd or 0.0

    def add_saved(self, table: pa.Table) -> None:
        """Count rows already in shards, as `add` counts rows as they are answered (a
        Ray block's retry counts what its killed attempt saved: this run paid for it)."""
        statuses = table.column("status").to_pylist()
        kinds = table.column("error_kind").to_pylist()
        for status, kind in zip(statuses, kinds, strict=True):
            if status == "ok":
                self.ok += 1
            else:
                self.errors += 1
                kind = kind or "unknown"
                self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        self.prompt_tokens += int(pc.sum(table.column("prompt_tokens")).as_py() or 0)
        self.completion_tokens += int(pc.sum(table.column("completion_tokens")).as_py() or 0)
        self.cost_usd += float(pc.sum(table.column("cost_usd")).as_py() or 0.0)
        estimated = pc.equal(table.column("usage_source"), "estimated")
        self.usage_estimated += int(pc.sum(estimated).as_py() or 0)


@dataclass(slots=True)
class StopReason:
    kind: str = ""  # "", "fatal", "budget", "interrupted", "storage"
    message: str = ""

    def set(self, kind: str, message: str) -> None:
        if not self.kind:
            self.kind, self.message = kind, message


class _Ahead:
    """Prepared rows waiting for a worker: a deque, cheaper per row than asyncio.Queue.
    `put` waits while `size` rows are waiting; `get` returns None once `close`d and
    empty."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._rows: deque[Prepared] = deque()
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        self._closed = False

    async def put(self, rows: list[Prepared]) -> None:
        while len(self._rows) >= self.size:
            self._room.clear()
            await self._room.wait()
        self._rows.extend(rows)
        self._more.set()

    def close(self) -> None:
        self._closed = True
        self._more.set()

    async def get(self) -> Prepared | None:
        while not self._rows:
            if self._closed:
                return None
            self._more.clear()
            await self._more.wait()
        row = self._rows.popleft()
        if len(self._rows) < self.size:
            self._room.set()
        return row


async def caption_rows(
    rows: Iterable[ManifestRow],
    captioner: Captioner,
    writer: ResultSink,
    *,
    workers: int,
    stop: StopReason,
    progress: Callable[[ResultRow, Tally], None] | None = None,
    tally: Tally | None = None,
) -> Tally:
    """Caption `rows` with `workers` workers (and up to as many substitutes while rows
    wait out a Retry-After or a backoff: never more than twice `workers` rows taken) and
    write every result. Requests in flight are bounded by the captioner's limiter.

    A row is written once it has an outcome (`ok` or `error`). A row that has none when the
    run stops (fatal answer, budget, interrupt, a full disk) is not written: it stays
    pending.
    """
    tally = tally if tally is not None else Tally()
    stopping = captioner.stopping
    waiting = captioner.waiting
    source = iter(rows)
    chunk = min(CHUNK_ROWS, workers)
    ahead = _Ahead(chunk)
    failed: list[Exception] = []
    tasks: set[asyncio.Future[None]] = set()
    live = 0  # workers running

    async def prepare() -> None:
        try:
            while not stopping.is_set():
                prepared = await asyncio.to_thread(captioner.preparer.chunk, source, chunk)
                if not prepared:
                    break  # the end of the rows
                await ahead.put(prepared)
        except Exception as exc:  # the manifest could not be read: stop, then raise it
            failed.append(exc)
            stopping.set()
        ahead.close()

    def record(row: ResultRow) -> bool:
        """Write a row with its outcome; False (and stop) when the disk refuses it."""
        try:
            writer.write(row)
        except StorageError as exc:
            # The writer keeps the row and tries it again on close; stop sending.
            stop.set("storage", str(exc))
            stopping.set()
            return False
        tally.add(row)
        if progress is not None:
            progress(row, tally)
        return True

    async def work() -> None:
        nonlocal live
        try:
            # A substitute leaves once the row it stood in for is back at work.
            while live - waiting.count <= workers:
                if not await take_and_caption():
                    return
        finally:
            live -= 1

    def start_worker() -> None:
        nonlocal live
        live += 1
        task = asyncio.ensure_future(work())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def add_substitute() -> None:  # a row went to wait: a worker takes its place
        if live - waiting.count < workers and live < 2 * workers:
            start_worker()

    async def take_and_caption() -> bool:
        """One row from taken to written; False when this worker is done."""
        item = await ahead.get()
        if item is None or stopping.is_set():
            return False  # no more rows, or the run stops: the row stays pending
        try:
            result = await captioner.caption(item)
        except BudgetReached:
            stop.set("budget", "budget cap reached")
            stopping.set()
            return False
        except Stopping:
            return False
        except FatalApiError as exc:
            stop.set("fatal", exc.message)
            stopping.set()
            return False
        if captioner.breaker.hold(result):
            return True  # it may only say the job is wrong: decided later
        # Every row goes to the writer, which keeps what the disk refused.
        saved = [record(row) for row in (*captioner.breaker.release(), result)]
        return all(saved)

    producer = asyncio.ensure_future(prepare())
    waiting.on_wait = add_substitute
    try:
        for _ in range(workers):
            start_worker()
        while tasks:
            await asyncio.gather(*tasks)
    finally:
        for task in (producer, *tasks):
            task.cancel()
        await asyncio.gather(producer, *tasks, return_exceptions=True)
        tally.bytes_sent = captioner.bytes_sent  # cancelled too (a second Ctrl-C)
        tally.images = captioner.preparer.sizes
    if failed:
        raise failed[0]
    if (wrong := captioner.breaker.verdict()) is not None:
        stop.set("fatal", wrong.message)  # the rows held back stay pending
    elif not stop.kind:
        for row in captioner.breaker.release(final=True):  # ordinary error rows after all
            record(row)
    return tally
