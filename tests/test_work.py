"""The unit of work: images are read off the event loop, a chunk at a time."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.engine import prepare
from pipeline.engine.budget import BudgetReached
from pipeline.engine.prepare import Prepared, Sizes
from pipeline.engine.retries import WaitingRows
from pipeline.engine.work import StopReason, Tally, caption_rows
from pipeline.errors import FatalApiError, StorageError
from pipeline.http.breaker import CircuitBreaker
from pipeline.records import ManifestRow, ResultRow
from pipeline.sources.images import LoadedImage
from tests.fakes import ScriptedServer
from tests.helpers import SAMPLES, results


def test_images_are_read_in_a_thread_not_on_the_event_loop(
    tmp_path: Path, server: ScriptedServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = prepare.load_image

    def recording(source: str, max_bytes: int, fetched: bytes | None = None) -> LoadedImage:
        threads.append(threading.current_thread())
        return real(source, max_bytes, fetched)

    monkeypatch.setattr(prepare, "load_image", recording)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["run", str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert len(results(out)) == 6
    assert len(threads) == 6
    assert threading.main_thread() not in threads  # the loop runs in the main thread


# -- the unit of work alone, with a stub captioner -------------------------------------


class StubPreparer:
    def __init__(self) -> None:
        self.sizes = Sizes()

    def chunk(self, rows: Iterator[ManifestRow], size: int) -> list[Prepared]:
        return [Prepared(row, 0.0, body=b"{}") for row in itertools.islice(rows, size)]


class StubCaptioner:
    """What `caption_rows` uses of a captioner; `answer` decides each row."""

    def __init__(self, answer: Callable[[StubCaptioner, Prepared], Awaitable[ResultRow]]):
        self.answer = answer
        self.stopping = asyncio.Event()
        self.waiting = WaitingRows()
        self.preparer = StubPreparer()
        self.breaker = CircuitBreaker("http://stub")
        self.bytes_sent = 0
        self.sending = 0  # rows being sent right now
        self.most_sending = 0
        self.taken = 0  # rows taken and not yet answered, waiting ones included
        self.most_taken = 0

    async def caption(self, prepared: Prepared) -> ResultRow:
        self.taken += 1
        self.most_taken = max(self.most_taken, self.taken)
        try:
            return await self.answer(self, prepared)
        finally:
            self.taken -= 1

    async def send(self, seconds: float = 0.001) -> None:
        self.sending += 1
        self.most_sending = max(self.most_sending, self.sending)
        await asyncio.sleep(seconds)
        self.sending -= 1


def ok(prepared: Prepared) -> ResultRow:
    row = prepared.row
    return ResultRow(row.id, row.source, "ok", 1, 0.0, 0, cost_usd=0.01)


def manifest(n: int) -> list[ManifestRow]:
    return [ManifestRow(f"id{i:04d}", f"/img/{i}.png") for i in range(n)]


class Sink:
    def __init__(self, refuse_after: int | None = None) -> None:
        self.rows: list[ResultRow] = []
        self.refuse_after = refuse_after

    def write(self, row: ResultRow) -> None:
        if self.refuse_after is not None and len(self.rows) >= self.refuse_after:
            raise StorageError("out: no space left on device")
        self.rows.append(row)


def caption(
    captioner: StubCaptioner, rows: list[ManifestRow], sink: Sink, workers: int
) -> tuple[Tally, StopReason]:
    stop = StopReason()
    run = caption_rows(rows, captioner, sink, workers=workers, stop=stop)  # type: ignore[arg-type]
    return asyncio.run(run), stop


def test_every_row_is_written_once_with_at_most_workers_in_flight() -> None:
    async def answer(c: StubCaptioner, p: Prepared) -> ResultRow:
        await c.send()
        return ok(p)

    captioner, sink = StubCaptioner(answer), Sink()
    tally, stop = caption(captioner, manifest(300), sink, workers=8)
    assert sorted(r.id for r in sink.rows) == [r.id for r in manifest(300)]
    assert (tally.ok, tally.errors, stop.kind) == (300, 0, "")
    assert tally.cost_usd == pytest.approx(3.0)
    assert 1 < captioner.most_sending <= 8  # concurrent, and never past the workers


def test_a_waiting_row_lends_its_place_and_the_pool_stays_bounded() -> None:
    async def answer(c: StubCaptioner, p: Prepared) -> ResultRow:
        if int(p.row.id[2:]) % 4 == 0:  # every fourth row waits out a Retry-After
            with c.waiting.waiting():
                await asyncio.sleep(0.02)
        await c.send()
        return ok(p)

    captioner, sink = StubCaptioner(answer), Sink()
    tally, _ = caption(captioner, manifest(200), sink, workers=4)
    assert tally.ok == 200
    # Waiting rows were stood in for, and rows taken never pass twice the workers. (A row
    # back from waiting may send while its substitute finishes the row it holds: what
    # bounds requests in flight is the captioner's limiter, not the pool.)
    assert 4 < captioner.most_taken <= 8


def test_the_budget_stops_taking_rows_and_leaves_the_rest_pending() -> None:
    async def answer(c: StubCaptioner, p: Prepared) -> ResultRow:
        if int(p.row.id[2:]) >= 20:
            raise BudgetReached
        await c.send()
        return ok(p)

    captioner, sink = StubCaptioner(answer), Sink()
    tally, stop = caption(captioner, manifest(500), sink, workers=4)
    assert stop.kind == "budget"
    assert len(sink.rows) == tally.ok <= 20  # no row without an outcome is written
    assert captioner.stopping.is_set()


def test_a_fatal_answer_stops_the_run_and_rows_in_flight_are_still_written() -> None:
    async def answer(c: StubCaptioner, p: Prepared) -> ResultRow:
        if p.row.id == "id0010":
            raise FatalApiError("HTTP 401: bad key")
        await c.send(0.01)
        return ok(p)

    captioner, sink = StubCaptioner(answer), Sink()
    _, stop = caption(captioner, manifest(500), sink, workers=4)
    assert stop.kind == "fatal"
    assert "bad key" in stop.message
    assert 10 <= len(sink.rows) < 30  # those in flight finished; no new ones were taken
    assert "id0010" not in {r.id for r in sink.rows}


def test_a_full_disk_stops_sending() -> None:
    async def answer(c: StubCaptioner, p: Prepared) -> ResultRow:
        await c.send()
        return ok(p)

    captioner, sink = StubCaptioner(answer), Sink(refuse_after=50)
    tally, stop = caption(captioner, manifest(1000), sink, workers=4)
    assert stop.kind == "storage"
    assert "no space left" in stop.message
    assert len(sink.rows) == 50
    assert tally.ok < 60  # it stopped within the rows in flight
