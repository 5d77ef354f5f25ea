"""One prepared row -> one result row: reserve its worst case against the budget, send
it (retried by `retries.RetryPolicy`), read the answer (checked against the job's
labels), price it, and settle the budget. Anything raised while reading a paid answer
is that row's `invalid_output`, never the run's end."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import aiohttp

from pipeline.config.labels import Labels
from pipeline.config.prices import ModelPrice, cost_usd, rates_for
from pipeline.config.settings import JobConfig
from pipeline.cost.images import image_tokens, max_image_tokens
from pipeline.cost.tokens import estimated_usage, prompt_text_tokens
from pipeline.engine.budget import Budget, Stopping
from pipeline.engine.prepare import Prepared, Preparer, error_row, now_ms
from pipeline.engine.retries import RetryPolicy, Tries, WaitingRows
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
    pass

log = logging.getLogger(__name__)

# The most of an answer's text an `invalid_output` row keeps when reading it failed.
MAX_KEPT_TEXT = 64 * 1024


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
        self.waiting = WaitingRows()
        self.retry = RetryPolicy(config.limits, stopping, self.waiting)
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
        return self.config.limits.tpm is not None or self.budget.measure

    def prompt_tokens_estimate(self, width: int | None, height: int | None) -> int:
        rule = self.price.image
        if rule is None:
            return self.text_tokens
        detail = self.config.request.detail
        if width and height:
            return self.text_tokens + image_tokens(rule, width, height, detail)
        return self.text_tokens + max_image_tokens(rule, detail)

    @functools.cached_property
    def reserved_rates(self) -> ModelPrice:
        """The rates a row is reserved at: a tiered price's tier for this job's largest
        prompt (its text and the most tokens any image can cost), so no row costs more."""
        return rates_for(self.price, self.prompt_tokens_estimate(None, None))

    @functools.cached_property
    def worst_completion_usd(self) -> float:
        """`n * max_tokens` of completion at the model's price."""
        return cost_usd(self.reserved_rates, 0, self.max_completion)

    @functools.cached_property
    def usd_per_prompt_token(self) -> float:
        return cost_usd(self.reserved_rates, 1_000_000, 0) / 1_000_000

    # -- one row ----------------------------------------------------------------------

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
        tries = Tries()
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
                answer = await self.retry.retry(once, tries, first)
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
        self, prepared: Prepared, answer: Answer, tries: Tries, prompt_estimate: int
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
        )
        prepared.describe(result)
        if self.labels is not None and completion.choices:
            # Paid for either way: an answer that does not fit is an error row that keeps
            # its text and cost, and is not sent again unless --retry-errors asks.
            first = completion.choices[0]
            result.parsed, result.error_kind, result.error = self.labels.parse(
                first.content, first.finish_reason, first.refusal
            )
            if result.error_kind is not None:
                result.status = "error"
        return result

    def _unreadable(
        self, prepared: Prepared, answer: Answer, tries: Tries, exc: Exception
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
        return prepared.describe(row)

    def _cost(self, usage: Usage) -> float:
        return cost_usd(
            self.price, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
        )

    async def _attempt(self, body: bytes, tokens: int) -> Answer:
        async with self.limiter.slot(tokens):
            try:
                answer = await post_completion(
                    self.session, self.endpoint, body, stream=self.config.request.stream
                )
            except RateLimited as exc:
                self.bytes_sent += len(body)
                self.limiter.on_rate_limited()
                self.limiter.observe_headers(exc.headers, refused=True)
                raise
            except ApiError as exc:
                if exc.sent:  # not when no connection was made: nothing left
                    self.bytes_sent += len(body)
                self.limiter.observe_headers(exc.headers)
                self.breaker.failure(exc)  # raises FatalApiError when the job is wrong
                raise
            self.bytes_sent += len(body)
            self.breaker.success()
            self.limiter.on_success()
            self.limiter.observe_headers(answer.headers)
            return answer

    def _error_row(self, prepared: Prepared, exc: ApiError, tries: Tries, kind: str) -> ResultRow:
        row = error_row(prepared.row, exc, prepared.started, kind)
        row.attempts = tries.sent
        row.cost_usd = tries.billed_usd or None  # answers that were billed but unusable
        return prepared.describe(row)
