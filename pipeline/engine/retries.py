"""The retry policy, here and only here (tenacity, around one HTTP call at a time):

- transient failures (timeouts, resets, 5xx, 408, 409, unusable 200s) are retried up to
  `max_attempts` tries, waiting for Retry-After when given (capped at `max_retry_after`),
  else exponential backoff with jitter;
- 429 rate limits are retried too, but count against their own, larger allowance
  (`max_rate_limit_waits`): a storm of 429s throttles the whole pool through the limiter
  instead of burning every row's attempts;
- a rejected row is an error row at once; a fatal answer propagates and stops the run
  (both decided by the captioner, which calls `retry` only for transient failures).

A row waiting to retry lends its place in the pool (`WaitingRows`), so waits do not idle
the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pipeline.config.settings import LimitsConfig
from pipeline.errors import RateLimited, TransientError
from pipeline.http.waits import backoff

if TYPE_CHECKING:
    from tenacity import RetryCallState

T = TypeVar("T")


class WaitingRows:
    """Rows waiting out a Retry-After or a backoff. Such a row lends its place in the
    pool meanwhile (`waiting`): the unit of work starts a substitute worker (`on_wait`),
    which leaves again once the row is back. So one 429 in ten does not idle a tenth of
    the pool for a second each, and at most twice the concurrency of rows are ever
    taken."""

    def __init__(self) -> None:
        self.count = 0
        self.on_wait: Callable[[], None] = lambda: None

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        self.count += 1
        self.on_wait()
        try:
            yield
        finally:
            self.count -= 1


@dataclass(slots=True)
class Tries:
    """One row's attempts so far."""

    sent: int = 0
    failures: int = 0
    rate_limited: int = 0
    billed_usd: float = 0.0  # attempts answered and billed, but unusable


class RetryPolicy:
    def __init__(self, limits: LimitsConfig, stopping: asyncio.Event, waiting: WaitingRows) -> None:
        self.limits = limits
        self.stopping = stopping
        self.waiting = waiting

    def delay(self, exc: BaseException | None, failures: int) -> float:
        """Retry-After when the server gave one (capped), else backoff with jitter."""
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, self.limits.max_retry_after)
        return backoff(failures)

    def exhausted(self, tries: Tries, exc: BaseException | None) -> bool:
        """Count one failure; True when the row has used up its allowance for that kind."""
        if isinstance(exc, RateLimited):
            tries.rate_limited += 1
            return tries.rate_limited > self.limits.max_rate_limit_waits
        tries.failures += 1
        return tries.failures >= self.limits.max_attempts

    async def retry(
        self, once: Callable[[], Awaitable[T]], tries: Tries, first: TransientError
    ) -> T:
        """Attempts after a first transient failure, under tenacity's policy."""
        # Imported here: most runs never retry, and the import is 12 ms of every start.
        from tenacity import AsyncRetrying, retry_if_exception_type

        if self.exhausted(tries, first):
            raise first
        await self.sleep(self.delay(first, 1))

        def stop(state: RetryCallState) -> bool:
            return self.exhausted(tries, state.outcome.exception() if state.outcome else None)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self.delay(exc, state.attempt_number + 1)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop,
            wait=wait,
            sleep=self.sleep,
            reraise=True,
        )
        return await retrying(once)

    async def sleep(self, seconds: float) -> None:
        """Back off, but wake at once when the run stops: the row then stays pending.
        Meanwhile its place in the pool goes to another row (`WaitingRows`)."""
        with self.waiting.waiting(), contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
