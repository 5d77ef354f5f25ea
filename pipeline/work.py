"""The unit of work: manifest rows in, result rows out through a sink. Engine-agnostic:
an executor (`pipeline.executors`) decides where it runs and with which captioner.

Images are read and request bodies built in a thread, a chunk of rows at a time, so the
event loop never reads a file and pays for one hand-off per chunk rather than per row
(one per row cost 180 us of CPU an image). At most `workers` rows are in flight, plus
one chunk waiting and one being prepared: memory is flat in the number of rows.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.errors import FatalApiError, StorageError
from pipeline.records import ManifestRow, ResultRow
from pipeline.worker import BudgetReached, Captioner, Prepared, Stopping
from pipeline.writer import ResultSink

CHUNK_ROWS = 32


@dataclass(slots=True)
class Tally:
    """What this run did."""

    ok: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, row: ResultRow) -> None:
        if row.status == "ok":
            self.ok += 1
        else:
            self.errors += 1
            kind = row.error_kind or "unknown"
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        if row.completion is not None:
            self.prompt_tokens += row.completion.usage.prompt_tokens
            self.completion_tokens += row.completion.usage.completion_tokens
        self.cost_usd += row.cost_usd or 0.0

    @property
    def done(self) -> int:
        return self.ok + self.errors


@dataclass(slots=True)
class StopReason:
    kind: str = ""  # "", "fatal", "budget", "interrupted", "storage"
    message: str = ""

    def set(self, kind: str, message: str) -> None:
        if not self.kind:
            self.kind, self.message = kind, message


def _prepare_chunk(rows: Iterator[ManifestRow], captioner: Captioner, size: int) -> list[Prepared]:
    """The next `size` rows, prepared (in a worker thread: reading the manifest and the
    images both block)."""
    return [captioner.prepare(row) for row in itertools.islice(rows, size)]


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
    """Caption `rows` with at most `workers` rows being sent at once (and as many more
    waiting out a Retry-After or a backoff) and write every result.

    A row is written once it has an outcome (`ok` or `error`). A row that has none when the
    run stops (fatal answer, budget, interrupt, a full disk) is not written: it stays
    pending.
    """
    tally = tally if tally is not None else Tally()
    stopping = captioner.stopping
    source = iter(rows)
    chunk = min(CHUNK_ROWS, workers)
    ready: asyncio.Queue[Prepared | None] = asyncio.Queue(maxsize=chunk)
    failed: list[Exception] = []

    async def prepare() -> None:
        try:
            while not stopping.is_set():
                prepared = await asyncio.to_thread(_prepare_chunk, source, captioner, chunk)
                for item in prepared:
                    await ready.put(item)
                if len(prepared) < chunk:
                    break
        except Exception as exc:  # the manifest could not be read: stop, then raise it
            failed.append(exc)
            stopping.set()
        for _ in range(2 * workers):
            await ready.put(None)  # no more rows

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
        while True:
            async with captioner.hand:
                if not await take_and_caption():
                    return

    async def take_and_caption() -> bool:
        """One row from taken to written; False when this worker is done."""
        item = await ready.get()
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
    try:
        await asyncio.gather(*(work() for _ in range(2 * workers)))
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
    if failed:
        raise failed[0]
    for row in captioner.breaker.release():  # held, then shown ordinary by a later answer
        record(row)
    if (wrong := captioner.breaker.verdict()) is not None:
        stop.set("fatal", wrong.message)
    return tally
