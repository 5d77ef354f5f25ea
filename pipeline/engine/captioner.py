"""One prepared row -> one result row: send the request with retries, check and price it.

The retry policy lives here and only here (tenacity, wrapped around the single HTTP call
of `pipeline.http.client`):

- transient failures (timeouts, resets, 5xx, 408, 409, unusable 200s) are retried up to
  `max_attempts` tries, waiting for Retry-After when given (capped at `max_retry_after`),
  else exponential backoff with jitter;
- 429 rate limits are retried too, but count against their own, larger allowance
  (`max_rate_limit_waits`): a storm of 429s throttles the whole pool through the limiter
  instead of burning every row's attempts;
- a rejected row is an error row at once; a fatal answer propagates and stops the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import aiohttp

from pipeline.config.labels import Labels
from pipeline.config.prices import ModelPrice, cost_usd
from pipeline.config.settings import JobConfig
from pipeline.cost.tokens import estimated_usage, image_tokens, max_image_tokens, prompt_text_tokens
from pipeline.engine.budget import Budget, Stopping
from pipeline.engine.prepare import Prepared, Preparer, error_row, now_ms
from pipeline.errors import (
    ApiError,
    RateLimited,
    RequestRejected,
    ResponseTooLarge,
    TransientError,
)
from pipeline.http.breaker import CircuitBreaker
from pipeline.http.client import Answer, Endpoint, post_completion
from pipeline.http.limiter import AdaptiveLimiter
from pipeline.http.request import worst_case_completion_tokens
from pipeline.records import ResultRow, Usage

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
# The most of an answer's text an `invalid_output` row keeps when reading it failed.
MAX_KEPT_TEXT = 64 * 1024


def backoff(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """openai-python's schedule: min(0.5 * 2^(n-1), 8) s, less up to 25% jitter."""
    return min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_MAX_S) * (1 - 0.25 * rand())


class Hand:
    """Rows waiting out a Retry-After or a backoff. Such a row lends its place meanwhile
    (`lent`): the unit of work starts a substitute worker, which stops again once the
    lender is back. So one 429 in ten does not idle a tenth of the pool for a second
    each, and at most twice the concurrency of rows are ever in hand."""

    def __init__(self) -> None:
        self.lending = 0
        self.on_lend: Callable[[], None] = lambda: None

    @contextlib.contextmanager
    def lent(self) -> Iterator[None]:
        self.lending += 1
        self.on_lend()
        try:
            yield
        finally:
            self.lending -= 1


@dataclass(slots=True)
class _Tries:
    sent: int = 0
    failures: int = 0
    rate_limited: int = 0
    billed_usd: float = 0.0  # attempts answered and billed, but unusable


class Captioner:
    """Everything needed to caption rows against one endpoint, shared by all workers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        config: JobConfig,
        limiter: AdaptiveLimiter,
        stopping: asyncio.Event,
        budget: Budget | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.session = session
        self.endpoint = endpoint
        self.config = config
        self.limiter = limiter
        self.stopping = stopping
        self.budget = budget or Budget(None)
        self.breaker = breaker or CircuitBreaker(endpoint.url)
        self.hand = Hand()
        self.retries = 0  # attempts after a row's first, for the progress bar
        self.price: ModelPrice = config.prices[config.request.model]
        req = config.request
        self.max_completion = worst_case_completion_tokens(req)
        self.preparer = Preparer(config)
        self.bytes_sent = 0  # request bodies, every attempt
        self.labels = Labels.for_job(req.response_format, req.json_schema)

    # -- estimates for limits and budget ----------------------------------------------

    @functools.cached_property
    def text_tokens(self) -> int:
        """Loaded on first use: only the TPM cap and the budget need estimates."""
        req = self.config.request
        return prompt_text_tokens(req.system_prompt, req.prompt, req.json_schema)

    @property
    def needs_estimates(self) -> bool:
        return self.config.limits.tpm is not None or self.budget.cap_usd is not None

    def prompt_tokens_estimate(self, width: int | None, height: int | None) -> int:
        rule = self.price.image
        if rule is None:
            return self.text_tokens
        detail = self.config.request.detail
        if width and height:
            return self.text_tokens + image_tokens(rule, width, height, detail)
        return self.text_tokens + max_image_tokens(rule, detail)

    @functools.cached_property
    def worst_completion_usd(self) -> float:
        """`n * max_tokens` of completion at the model's price."""
        return cost_usd(self.price, 0, self.max_completion)

    @functools.cached_property
    def usd_per_prompt_token(self) -> float:
        return cost_usd(self.price, 1_000_000, 0) / 1_000_000

    # -- one row ----------------------------------------------------------------------

    def _delay(self, exc: BaseException | None, failures: int) -> float:
        """Retry-After when the server gave one (capped), else backoff with jitter."""
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, self.config.limits.max_retry_after)
        return backoff(failures)

    def _exhausted(self, tries: _Tries, exc: BaseException | None) -> bool:
        """Count one failure; True when the row has used up its allowance for that kind."""
        if isinstance(exc, RateLimited):
            tries.rate_limited += 1
            return tries.rate_limited > self.config.limits.max_rate_limit_waits
        tries.failures += 1
        return tries.failures >= self.config.limits.max_attempts

    async def _retry(
        self, once: Callable[[], Awaitable[Answer]], tries: _Tries, first: TransientError
    ) -> Answer:
        """Attempts after a first transient failure, under tenacity's policy."""
        # Imported here: most runs never retry, and the import is 12 ms of every start.
        from tenacity import AsyncRetrying, retry_if_exception_type

        if self._exhausted(tries, first):
            raise first
        await self._sleep(self._delay(first, 1))

        def stop(state: RetryCallState) -> bool:
            return self._exhausted(tries, state.outcome.exception() if state.outcome else None)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self._delay(exc, state.attempt_number + 1)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop,
            wait=wait,
            sleep=self._sleep,
            reraise=True,
        )
        return await retrying(once)

    async def _sleep(self, seconds: float) -> None:
        """Back off, but wake at once when the run stops: the row then stays pending.
        Meanwhile its place in hand goes to another row (`hand`)."""
        with self.hand.lent(), contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def caption(self, prepared: Prepared) -> ResultRow:
        """Caption one prepared row. Raises `Stopping` (or `BudgetReached`) if the run
        stops before the row is answered, and `FatalApiError` if the endpoint refuses the
        whole job."""
        if prepared.rejected is not None:
            return prepared.rejected
        width, height = prepared.width, prepared.height
        prompt_estimate = self.prompt_tokens_estimate(width, height) if self.needs_estimates else 0
        fixed = 0.0
        if self.budget.cap_usd is not None:
            fixed = self.worst_completion_usd
            await self.budget.ready(prompt_estimate, fixed, self.usd_per_prompt_token)
        self.budget.reserve(prompt_estimate, fixed, self.usd_per_prompt_token)
        body, prepared.body = prepared.body, b""  # the row's only copy from here on
        result: ResultRow | None = None
        try:
            result = await self._send(prepared, body, prompt_estimate)
            return result
        finally:
            actual = result.cost_usd if result is not None and result.cost_usd else 0.0
            self.budget.settle(prompt_estimate, fixed, actual)

    async def _send(self, prepared: Prepared, body: bytes, prompt_estimate: int) -> ResultRow:
        row = prepared.row
        tries = _Tries()
        tokens = prompt_estimate + self.max_completion

        async def once() -> Answer:
            if self.stopping.is_set():
                raise Stopping
            tries.sent += 1
            self.retries += tries.sent > 1
            try:
                return await self._attempt(body, tokens)
            except ApiError as exc:
                if exc.usage is not None:
                    tries.billed_usd += self._cost(exc.usage)  # unusable, but billed
                raise

        try:
            try:
                # Most rows succeed on their first try; only the others pay for tenacity.
                answer = await once()
            except TransientError as first:
                answer = await self._retry(once, tries, first)
        except ResponseTooLarge as exc:
            return self._error_row(prepared, exc, tries, kind="response_too_large")
        except RequestRejected as exc:
            return self._error_row(prepared, exc, tries, kind="rejected")
        except TransientError as exc:
            kind = "rate_limited" if isinstance(exc, RateLimited) else "transient"
            return self._error_row(prepared, exc, tries, kind=kind)
        try:
            return self._interpret(prepared, answer, tries, prompt_estimate)
        except Exception as exc:  # the row's business, never the run's
            # A paid answer that breaks our reading of it (a parser or pricing bug, an
            # answer shaped to hurt) becomes this row's error, with its text and cost;
            # ending the run here would lose the answers in flight and buy them again.
            log.exception("row %s: reading its answer failed", row.id)
            return self._unreadable(prepared, answer, tries, exc)

    def _interpret(
        self, prepared: Prepared, answer: Answer, tries: _Tries, prompt_estimate: int
    ) -> ResultRow:
        """A usable answer as a result row: usage (ours when the server's is missing or
        does not read), cost, and a structured job's labels."""
        completion = answer.completion
        if completion.usage.reported:
            self.budget.observe(prompt_estimate, completion.usage.prompt_tokens)
        else:
            # No usage from the server: count it ourselves, or the budget would be blind.
            estimate = prompt_estimate or self.prompt_tokens_estimate(
                prepared.width, prepared.height
            )
            completion = replace(completion, usage=estimated_usage(completion, estimate))
        result = ResultRow(
            id=prepared.row.id,
            source=prepared.row.source,
            status="ok",
            attempts=tries.sent,
            latency_s=time.perf_counter() - prepared.started,
            finished_at_ms=now_ms(),
            http_status=answer.http_status,
            completion=completion,
            cost_usd=self._cost(completion.usage) + tries.billed_usd,
            image_width=prepared.width,
            image_height=prepared.height,
        )
        if self.labels is not None and completion.choices:
            # Paid for either way: an answer that does not fit is an error row that keeps
            # its text and cost, and is not sent again unless --retry-errors asks.
            first = completion.choices[0]
            result.parsed, result.error_kind, result.error = self.labels.parse(
                first.content, first.finish_reason
            )
            if result.error_kind is not None:
                result.status = "error"
        return result

    def _unreadable(
        self, prepared: Prepared, answer: Answer, tries: _Tries, exc: Exception
    ) -> ResultRow:
        """An `invalid_output` row for an answer whose reading raised: the text kept
        (capped), the cost at the server's usage when it reads, else at our count."""
        completion = answer.completion
        choices = tuple(
            replace(ch, content=ch.content[:MAX_KEPT_TEXT] if ch.content else ch.content)
            for ch in completion.choices
        )
        try:
            usage = completion.usage
            if not usage.reported:
                estimate = self.prompt_tokens_estimate(prepared.width, prepared.height)
                usage = estimated_usage(completion, estimate)
            cost: float | None = self._cost(usage) + tries.billed_usd
        except Exception:  # the row is recorded all the same
            usage, cost = completion.usage, tries.billed_usd or None
        row = error_row(
            prepared.row,
            ApiError(f"the answer could not be read: {type(exc).__name__}: {str(exc)[:200]}"),
            prepared.started,
            "invalid_output",
        )
        row.attempts = tries.sent
        row.http_status = answer.http_status
        row.completion = replace(completion, choices=choices, usage=usage)
        row.cost_usd = cost
        row.image_width, row.image_height = prepared.width, prepared.height
        return row

    def _cost(self, usage: Usage) -> float:
        return cost_usd(
            self.price, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
        )

    async def _attempt(self, body: bytes, tokens: int) -> Answer:
        async with self.limiter.slot(tokens):
            self.bytes_sent += len(body)
            try:
                answer = await post_completion(
                    self.session, self.endpoint, body, stream=self.config.request.stream
                )
            except RateLimited as exc:
                self.limiter.on_rate_limited()
                self.limiter.observe_headers(exc.headers)
                raise
            except ApiError as exc:
                self.limiter.observe_headers(exc.headers)
                self.breaker.failure(exc)  # raises FatalApiError when the job is wrong
                raise
            self.breaker.success()
            self.limiter.on_success()
            self.limiter.observe_headers(answer.headers)
            return answer

    def _error_row(self, prepared: Prepared, exc: ApiError, tries: _Tries, kind: str) -> ResultRow:
        row = error_row(prepared.row, exc, prepared.started, kind)
        row.attempts = tries.sent
        row.cost_usd = tries.billed_usd or None  # answers that were billed but unusable
        row.image_width, row.image_height = prepared.width, prepared.height
        return row
