"""The local executor: the unit of work on one event loop, with one HTTP session, one
limiter and one writer. Signals stop it gracefully: the first Ctrl-C or SIGTERM stops
dispatching and gives requests in flight a grace period, a second one ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from pipeline.engine.work import StopReason, Tally, caption_rows
from pipeline.errors import StorageError
from pipeline.executors.base import Executed, Work, open_captioner
from pipeline.executors.progress import Progress
from pipeline.output.writer import ShardWriter

log = logging.getLogger(__name__)

INTERRUPT_GRACE_S = 10.0


class LocalExecutor:
    """Runs the work in this process (`execute`)."""

    def check(self, output: str, sources: list[str]) -> None:
        pass  # this machine sees whatever the command line names

    def run(self, work: Work) -> Executed:
        return asyncio.run(execute(work))


async def execute(work: Work) -> Executed:
    """One event loop, one session, one limiter, one writer. Through `work.on_lost` a
    bucket folder's mirror tells it (from its own thread) to stop sending: rows in flight
    finish and are written, the rest stay pending."""
    config, out, on_lost = work.config, work.out, work.on_lost
    stop = StopReason()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    writer = ShardWriter(out.path, config.output.rows_per_shard, schema=out.result_schema())
    progress = Progress(work.total) if work.show_progress else None
    tally = Tally()
    sending: asyncio.Future[Tally] | None = None
    redraw: asyncio.Future[None] | None = None
    interrupts = 0

    def stop_now(why: str) -> None:
        if sending is not None and not sending.done():
            log.warning("%s; requests in flight stay pending", why)
            sending.cancel()

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
    signals = (signal.SIGINT, signal.SIGTERM) if work.handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        async with open_captioner(config, work.api_key, stopping, work.budget) as captioner:
            if progress is not None:
                progress.captioner = captioner
                redraw = asyncio.ensure_future(progress.redraw_every_second())
            sending = asyncio.ensure_future(
                caption_rows(
                    work.rows,
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
            await asyncio.wait({sending})
            if not sending.cancelled():
                sending.result()
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
    return Executed(tally, stop, len(writer.unsaved))
