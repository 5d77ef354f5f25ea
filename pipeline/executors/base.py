"""What every executor shares: the work it is given (`Work`), what it gives back
(`Executed`), the one protocol it implements (`Executor`), and the captioner factory
each of its event loops uses (`open_captioner`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from pipeline.config.settings import JobConfig
from pipeline.engine.budget import Budget
from pipeline.engine.captioner import Captioner
from pipeline.engine.work import StopReason, Tally
from pipeline.http.client import Endpoint
from pipeline.http.limiter import AdaptiveLimiter
from pipeline.http.providers import provider_for
from pipeline.output.folder import OutputDir
from pipeline.records import ManifestRow


@dataclass(slots=True)
class Work:
    """The pending rows of a job and all an executor needs to caption them into `out`."""

    config: JobConfig
    out: OutputDir
    rows: Iterator[ManifestRow]
    api_key: str
    budget: Budget  # the folder's spend so far; the executor adds what it spends
    total: int  # rows in `rows`, for the progress bar
    show_progress: bool = False
    handle_signals: bool = True  # False: a library call leaves signal handlers alone
    # Where the run subscribes to be told, from another thread, to stop sending (a bucket
    # folder's lock is being lost).
    on_lost: list[Callable[[str], None]] | None = None


@dataclass(slots=True)
class Executed:
    """What an executor did: the tally, why it stopped early (if it did), and how many
    answered rows it could not save (the disk stayed full; sent again by the next run)."""

    tally: Tally = field(default_factory=Tally)
    stop: StopReason = field(default_factory=StopReason)
    unsaved: int = 0


class Executor(Protocol):
    def check(self, output: str, sources: list[str]) -> None:
        """Refuse, before anything is read or sent, a job this executor cannot run."""

    def run(self, work: Work) -> Executed:
        """Caption `work.rows` into `work.out`; on return the folder is in order (every
        answer in a shard, or in a journal the next run folds)."""


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
            provider=provider_for(config.request.model),
            model=config.request.model,
        )
        limiter = limiter or AdaptiveLimiter(
            limits.concurrency, limits.rpm, limits.tpm, max_pause=limits.max_retry_after
        )
        captioner = Captioner(session, endpoint, config, limiter, stopping, budget)
        try:
            yield captioner
        finally:
            captioner.preparer.close()  # the resize workers, if any
