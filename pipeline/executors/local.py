"""The local executor: the unit of work on one event loop, with one HTTP session, one
limiter and one writer. Signals stop it gracefully: the first Ctrl-C or SIGTERM stops
dispatching and gives requests in flight a grace period, a second one ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import aiohttp

from pipeline.config.settings import JobConfig
from pipeline.engine.budget import Budget
from pipeline.engine.captioner import Captioner
from pipeline.engine.work import StopReason, Tally, caption_rows
from pipeline.errors import StorageError
from pipeline.http.client import Endpoint
from pipeline.http.limiter import AdaptiveLimiter
from pipeline.output.folder import OutputDir
from pipeline.output.writer import ShardWriter
from pipeline.records import ManifestRow, ResultRow

log = logging.getLogger(__name__)

INTERRUPT_GRACE_S = 10.0


@asynccontextmanager
async def endpoint_url(config: JobConfig) -> AsyncIterator[str]:
    if config.endpoint.is_fake:
        from pipeline.testing.fake_server import FakeEndpoint

        async with FakeEndpoint() as fake:
            yield fake.url
    else:
        yield config.endpoint.url


@asynccontextmanager
async def open_captioner(
    config: JobConfig,
    api_key: str,
    stopping: asyncio.Event,
    budget: Budget,
    limiter: AdaptiveLimiter | None = None,
) -> AsyncIterator[Captioner]:
    """One session, one limiter (this process's own, unless given: the Ray executor's
    leases from a shared account) and the endpoint (started here when it is the fake)."""
    limits = config.limits
    connector = aiohttp.TCPConnector(limit=limits.concurrency, ttl_dns_cache=300)
    async with (
        endpoint_url(config) as url,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        endpoint = Endpoint.create(
            url,
            api_key,
            config.endpoint.auth_scheme,
            config.endpoint.timeout,
            max_response_bytes=int(limits.max_response_mb * 1_000_000),
        )
        limiter = limiter or AdaptiveLimiter(
            limits.concurrency, limits.rpm, limits.tpm, max_pause=limits.max_retry_after
        )
        captioner = Captioner(session, endpoint, config, limiter, stopping, budget)
        try:
            yield captioner
        finally:
            captioner.preparer.close()  # the resize workers, if any


class Progress:
    """A tqdm bar on stderr: rows, rate, errors and dollars so far, and what holds the run
    back: requests in flight against the limiter's window, a server pause or pacing, and
    retries. It is redrawn every second even when no row finishes (a long pause), and its
    last frame shows the run's final figures."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            file=sys.stderr,
            unit="img",
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self.tally = Tally()
        self.captioner: Captioner | None = None
        self._last = 0.0

    def __call__(self, row: ResultRow, tally: Tally) -> None:
        self.tally = tally
        self.bar.update(1)
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self.bar.set_postfix_str(self.describe(), refresh=False)

    def describe(self) -> str:
        tally = self.tally
        text = f"errors={tally.errors} ${tally.cost_usd:.4f}"
        if self.captioner is not None:
            limiter = self.captioner.limiter
            text += f" in-flight={limiter.in_flight}/{int(limiter.window)}"
            if held := limiter.held_back():
                text += f" ({held})"
            if self.captioner.retries:
                text += f" retries={self.captioner.retries}"
        return text

    async def redraw_every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.bar.set_postfix_str(self.describe(), refresh=True)

    def close(self) -> None:
        self.bar.set_postfix_str(self.describe(), refresh=True)
        self.bar.close()


async def execute(
    config: JobConfig,
    out: OutputDir,
    rows: Iterator[ManifestRow],
    api_key: str,
    budget: Budget,
    total: int,
    show_progress: bool,
    handle_signals: bool = True,
    on_lost: list[Callable[[str], None]] | None = None,
) -> tuple[Tally, StopReason, int]:
    """The local executor: one event loop, one session, one limiter, one writer.

    Returns what the run did, why it stopped, and how many answered rows could not be
    saved (the disk stayed full): those are sent again by the next run. Through
    `on_lost` a bucket folder's mirror tells it (from its own thread) to stop sending:
    rows in flight finish and are written, the rest stay pending.
    """
    stop = StopReason()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    writer = ShardWriter(out.path, config.output.rows_per_shard, schema=out.result_schema())
    progress = Progress(total) if show_progress else None
    tally = Tally()
    work: asyncio.Future[Tally] | None = None
    redraw: asyncio.Future[None] | None = None
    interrupts = 0

    def stop_now(why: str) -> None:
        if work is not None and not work.done():
            log.warning("%s; requests in flight stay pending", why)
            work.cancel()

    def on_signal(signame: str) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            stop_now(f"{signame} again: stopping now")
            return
        log.warning(
            "%s: stopping; waiting up to %.0f s for requests in flight (again to stop now)",
            signame,
            INTERRUPT_GRACE_S,
        )
        stop.set("interrupted", f"interrupted by {signame}")
        stopping.set()
        loop.call_later(
            INTERRUPT_GRACE_S, stop_now, f"still in flight after {INTERRUPT_GRACE_S:.0f} s"
        )

    def lost(message: str) -> None:  # from the mirror's thread
        def stop_sending() -> None:
            stop.set("storage", message)
            stopping.set()

        loop.call_soon_threadsafe(stop_sending)

    if on_lost is not None:
        on_lost.append(lost)
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        async with open_captioner(config, api_key, stopping, budget) as captioner:
            if progress is not None:
                progress.captioner = captioner
                redraw = asyncio.ensure_future(progress.redraw_every_second())
            work = asyncio.ensure_future(
                caption_rows(
                    rows,
                    captioner,
                    writer,
                    workers=config.limits.concurrency,
                    stop=stop,
                    progress=progress,
                    tally=tally,
                )
            )
            # Fatal answers and the budget let requests in flight finish and be written;
            # an interrupt gives them a grace period, a second one none (`stop_now`).
            await asyncio.wait({work})
            if not work.cancelled():
                work.result()
    finally:
        if redraw is not None:
            redraw.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
        if on_lost is not None:
            on_lost.remove(lost)
        if progress is not None:
            progress.close()
        try:
            writer.close()
        except StorageError as exc:
            stop.set("storage", str(exc))
    return tally, stop, len(writer.unsaved)
