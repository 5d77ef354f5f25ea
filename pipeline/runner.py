"""`caption run`: manifest -> pending rows -> worker pool -> writer, resumable.

The shape of a run:

1. check the output folder: same job (fingerprint) or a new folder;
2. (re)build the manifest from the sources, so a grown source adds rows;
3. recover from a crash (fold journals) and compact, then scan what is done;
4. stream the pending rows through `caption_rows`, the engine-agnostic unit of work:
   rows in, result rows out through a journal-protected `ShardWriter`;
5. record the totals in run.json and report.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa

from pipeline.client import Endpoint
from pipeline.config import JobConfig
from pipeline.errors import (
    EXIT_BUDGET,
    EXIT_FATAL_API,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_ROW_ERRORS,
    FatalApiError,
    UsageError,
)
from pipeline.limiter import AdaptiveLimiter
from pipeline.manifest import is_manifest, read_manifest, sample_rows, write_manifest
from pipeline.outdir import OutputDir, fingerprint, job_definition, utc_now
from pipeline.prices import price_entry
from pipeline.records import ManifestRow, ResultRow
from pipeline.worker import Budget, BudgetReached, Captioner, Stopping
from pipeline.writer import ResultSink, ShardWriter

log = logging.getLogger(__name__)

INTERRUPT_GRACE_S = 10.0
FAKE_API_KEY = "fake-key"


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
    kind: str = ""  # "", "fatal", "budget", "interrupted"
    message: str = ""

    def set(self, kind: str, message: str) -> None:
        if not self.kind:
            self.kind, self.message = kind, message


@dataclass(slots=True)
class RunOutcome:
    exit_code: int
    summary: str
    message: str | None = None  # one line for stderr when the run stopped early
    tally: Tally = field(default_factory=Tally)


# A pilot (a sampled run) whose rows all have an outcome, errors included, measured fine.
EXIT_PILOT_OK = (EXIT_OK, EXIT_ROW_ERRORS)


# ---------------------------------------------------------------------------------------
# The unit of work: rows in, a journal-protected shard out. Engine-agnostic.


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
    """Caption `rows` with at most `workers` rows in hand at once and write every result.

    A row is written once it has an outcome (`ok` or `error`). A row that has none when the
    run stops (fatal answer, budget, interrupt) is not written: it stays pending.
    """
    tally = tally if tally is not None else Tally()
    stopping = captioner.stopping
    # One iterator shared by the workers: each row goes to exactly one of them, and a
    # worker takes its next row only when it is free (no queue, no producer task).
    pending = iter(rows)

    async def work() -> None:
        for row in pending:
            if stopping.is_set():
                return  # the row stays pending
            try:
                result = await captioner.caption(row)
            except BudgetReached:
                stop.set("budget", "budget cap reached")
                stopping.set()
                return
            except Stopping:
                return
            except FatalApiError as exc:
                stop.set("fatal", exc.message)
                stopping.set()
                return
            writer.write(result)
            tally.add(result)
            if progress is not None:
                progress(result, tally)

    await asyncio.gather(*(work() for _ in range(workers)))
    return tally


# ---------------------------------------------------------------------------------------


def read_api_key(config: JobConfig) -> str:
    if config.endpoint.is_fake:
        return FAKE_API_KEY
    key = os.environ.get(config.endpoint.api_key_env, "").strip()
    if not key:
        raise UsageError(
            f"no API key: set the environment variable {config.endpoint.api_key_env} "
            "([endpoint] api_key_env names it)"
        )
    return key


@asynccontextmanager
async def endpoint_url(config: JobConfig) -> AsyncIterator[str]:
    if config.endpoint.is_fake:
        from pipeline.fake_server import FakeEndpoint

        async with FakeEndpoint() as fake:
            yield fake.url
    else:
        yield config.endpoint.url


@asynccontextmanager
async def open_captioner(
    config: JobConfig, api_key: str, stopping: asyncio.Event, budget: Budget
) -> AsyncIterator[Captioner]:
    """One session, one limiter and the endpoint (started here when it is the fake)."""
    limits = config.limits
    connector = aiohttp.TCPConnector(limit=limits.concurrency, ttl_dns_cache=300)
    async with (
        endpoint_url(config) as url,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        endpoint = Endpoint.create(
            url, api_key, config.endpoint.auth_scheme, config.endpoint.timeout
        )
        limiter = AdaptiveLimiter(limits.concurrency, limits.rpm, limits.tpm)
        yield Captioner(session, endpoint, config, limiter, stopping, budget)


class _Progress:
    """A tqdm bar on stderr: rows, rate, errors so far and dollars spent."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            file=sys.stderr,
            unit="img",
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self._last = 0.0

    def __call__(self, row: ResultRow, tally: Tally) -> None:
        self.bar.update(1)
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self.bar.set_postfix_str(f"errors={tally.errors} ${tally.cost_usd:.4f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


async def _execute(
    config: JobConfig,
    out: OutputDir,
    rows: Iterator[ManifestRow],
    schema: pa.Schema,
    api_key: str,
    budget: Budget,
    total: int,
    show_progress: bool,
) -> tuple[Tally, StopReason]:
    """The local executor: one event loop, one session, one limiter, one writer."""
    stop = StopReason()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signame: str) -> None:
        if stopping.is_set():
            return
        log.warning(
            "%s: stopping; waiting up to %.0f s for requests in flight", signame, INTERRUPT_GRACE_S
        )
        stop.set("interrupted", f"interrupted by {signame}")
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)

    writer = ShardWriter(out.path, schema, config.output.rows_per_shard)
    progress = _Progress(total) if show_progress else None
    tally = Tally()
    try:
        async with open_captioner(config, api_key, stopping, budget) as captioner:
            task = asyncio.ensure_future(
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
            await _wait_with_grace(task, stopping, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if progress is not None:
            progress.close()
        writer.close()
    return tally, stop


async def _wait_with_grace(
    task: asyncio.Future[Tally], stopping: asyncio.Event, stop: StopReason
) -> None:
    """Run to the end; after an interrupt, give requests in flight a short grace period."""
    stop_wait = asyncio.ensure_future(stopping.wait())
    try:
        done, _ = await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return
        if stop.kind != "interrupted":
            await task  # fatal or budget: in-flight requests finish and are written
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), INTERRUPT_GRACE_S)
        except TimeoutError:
            log.warning(
                "requests still in flight after %.0f s; they stay pending", INTERRUPT_GRACE_S
            )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        stop_wait.cancel()


class _Discard:
    """A result sink that keeps nothing: a pilot without an output folder is only measured."""

    def write(self, row: ResultRow) -> None:
        pass


async def _pilot(config: JobConfig, key: str, rows: list[ManifestRow]) -> Tally:
    stop = StopReason()
    async with open_captioner(config, key, asyncio.Event(), Budget(None)) as captioner:
        tally = await caption_rows(
            rows, captioner, _Discard(), workers=config.limits.concurrency, stop=stop
        )
    if stop.kind == "fatal":
        raise FatalApiError(stop.message)
    return tally


def run_pilot(config: JobConfig, rows: list[ManifestRow]) -> Tally:
    """Send real requests for `rows` (a sample) and measure them; nothing is written."""
    return asyncio.run(_pilot(config, read_api_key(config), rows))


def _prepare_manifest(
    out: OutputDir, sources: list[str], column: str | None, id_column: str | None
) -> None:
    if len(sources) == 1 and is_manifest(sources[0]):
        out.adopt_manifest(Path(sources[0]))
        return
    summary = write_manifest(sources, out.manifest, column=column, id_column=id_column)
    log.info("%s", summary.line())


def run_job(
    sources: list[str],
    out_path: Path,
    config: JobConfig,
    *,
    retry_errors: bool = False,
    show_progress: bool = True,
    column: str | None = None,
    id_column: str | None = None,
    sample: int = 0,
) -> RunOutcome:
    """Run the job; with `sample`, only that many pending rows, chosen at random (a pilot)."""
    started = time.perf_counter()
    out = OutputDir(out_path)
    if out.exists():
        out.check_fingerprint(config)  # before anything else: refuse a changed job at once
    api_key = read_api_key(config)
    out.path.mkdir(parents=True, exist_ok=True)
    with out.lock():
        return _run_locked(
            out,
            sources,
            config,
            api_key=api_key,
            retry_errors=retry_errors,
            show_progress=show_progress,
            column=column,
            id_column=id_column,
            sample=sample,
            started=started,
        )


def _run_locked(
    out: OutputDir,
    sources: list[str],
    config: JobConfig,
    *,
    api_key: str,
    retry_errors: bool,
    show_progress: bool,
    column: str | None,
    id_column: str | None,
    sample: int,
    started: float,
) -> RunOutcome:
    previous = out.check_fingerprint(config)  # again, now that no other run can write
    _prepare_manifest(out, sources, column, id_column)
    out.recover()
    out.compact()
    done = out.scan()
    skip = done.ok_ids if retry_errors else pa.concat_arrays([done.ok_ids, done.error_ids])
    rows: Iterable[ManifestRow] = read_manifest(out.manifest, skip=skip)
    pending = out.pending_count(skip)
    already = out.manifest_count() - pending
    total = pending  # rows this run sends: all pending ones, or a pilot's sample of them
    if sample:
        rows = sample_rows(rows, sample)
        total = len(rows)

    definition = job_definition(config)
    meta = previous or {"version": 1, "created_at": utc_now(), "runs": []}
    meta.update({"fingerprint": fingerprint(definition), "job": definition})
    # The price the rows are costed at, kept for `caption status` and for audits.
    meta["price"] = price_entry(config.prices[config.request.model])
    out.write_run_json(meta)

    budget = Budget(config.limits.max_cost_usd, spent_usd=done.cost_usd)
    run_started = utc_now()
    tally, stop = Tally(), StopReason()
    if total:
        tally, stop = asyncio.run(
            _execute(
                config,
                out,
                iter(rows),
                out.result_schema(),
                api_key,
                budget,
                total,
                show_progress,
            )
        )
    if retry_errors:
        out.compact()
    wall = time.perf_counter() - started
    remaining = pending - tally.done
    final = out.scan()
    exit_code = _exit_code(stop, tally)
    meta["runs"].append(_run_record(config, run_started, total, tally, stop, exit_code, wall))
    meta["totals"] = {
        "manifest_rows": out.manifest_count(),
        "ok": final.ok,
        "errors": final.errors,
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "cost_usd": final.cost_usd,
    }
    out.write_run_json(meta)

    summary = (
        f"{tally.ok} ok, {tally.errors} errors of {total} new "
        f"({already} already done, {remaining} pending); "
        f"tokens {tally.prompt_tokens} in / {tally.completion_tokens} out; "
        f"${tally.cost_usd:.4f} this run, ${final.cost_usd:.4f} in total; {wall:.1f} s"
    )
    return RunOutcome(exit_code, summary, _stop_message(stop, out, remaining, budget), tally)


def _run_record(
    config: JobConfig,
    started_at: str,
    new_rows: int,
    tally: Tally,
    stop: StopReason,
    exit_code: int,
    wall: float,
) -> dict[str, Any]:
    """One entry of run.json's history: what this run did, and how fast it was allowed to."""
    limits = config.limits
    return {
        "started_at": started_at,
        "finished_at": utc_now(),
        "new_rows": new_rows,
        "ok": tally.ok,
        "errors": tally.errors,
        "prompt_tokens": tally.prompt_tokens,
        "completion_tokens": tally.completion_tokens,
        "cost_usd": tally.cost_usd,
        "wall_s": round(wall, 3),
        "stopped": stop.kind or None,
        "exit_code": exit_code,
        "settings": {
            "concurrency": limits.concurrency,
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "max_cost_usd": limits.max_cost_usd,
        },
    }


def _exit_code(stop: StopReason, tally: Tally) -> int:
    if stop.kind == "fatal":
        return EXIT_FATAL_API
    if stop.kind == "budget":
        return EXIT_BUDGET
    if stop.kind == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_ROW_ERRORS if tally.errors else EXIT_OK


def _stop_message(stop: StopReason, out: OutputDir, remaining: int, budget: Budget) -> str | None:
    resume = f"rerun the same command to resume ({remaining} rows pending in {out.path})"
    if stop.kind == "fatal":
        return f"stopped: the endpoint refused the job: {stop.message}; fix it and {resume}"
    if stop.kind == "budget":
        return (
            f"stopped: budget cap ${budget.cap_usd:g} reached with ${budget.spent_usd:.4f} "
            f"spent; {remaining} rows remain; raise --max-cost and {resume}"
        )
    if stop.kind == "interrupted":
        return f"stopped: {stop.message}; {resume}"
    return None
