"""A worker's side of one shared account (`executors/account.py`): a limiter and a budget that lease
from it in small batches, with the interfaces the captioner already uses.

- `LeasedLimiter` keeps the local in-flight window (this worker's share of the
  concurrency, halved on a 429 as locally), and takes each request's send time from the
  account's global pacing, a batch of `LEASE_BATCH` at a time. Limits and pauses the
  server announces, and 429s, go to the account in the next report; a 429 also drops the
  send times this worker still holds, so its next ones come at the slower pace.
- `LeasedBudget` holds a slice of the budget: a row's worst case is reserved from the
  slice, what it did not cost goes back into it, and the slice is topped up (or the run
  stops at the cap) before a row is reserved.

The lease call is any coroutine `lease(n, tokens_each, want_usd, report) -> Lease`; the
Ray executor's goes to a Ray actor.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from pipeline.engine.budget import Budget, BudgetReached, Stopping
from pipeline.executors.account import Lease, Report
from pipeline.http.limiter import AdaptiveLimiter
from pipeline.records import ResultRow

LEASE_BATCH = 8  # send times per lease
BUDGET_ROWS = 8  # worst-case rows per budget slice
STALE_S = 0.05  # a send time this far in the past is not used
BUDGET_WAIT_S = 0.2  # between asks while the budget is out with other workers

LeaseCall = Callable[[int, float, float, Report, float], Awaitable[Lease]]


class LeaseClient:
    """One worker's connection to the account: one lease in flight at a time."""

    def __init__(self, worker: str, lease: LeaseCall) -> None:
        self.worker = worker
        self._lease = lease
        self.lock = asyncio.Lock()  # one lease in flight; held while a slice is topped up
        self._times: deque[float] = deque()
        self.report = Report(worker=worker)
        self.stopped: tuple[str, str] | None = None

    async def call(
        self, n: int, tokens_each: float, want_usd: float, need_usd: float = 0.0
    ) -> Lease:
        report, self.report = self.report, Report(worker=self.worker)
        try:
            lease = await self._lease(n, tokens_each, want_usd, report, need_usd)
        except Exception as exc:  # the account is gone: its driver died
            self.stopped = ("interrupted", f"the run's account is gone ({type(exc).__name__})")
            return Lease([], 0.0, self.stopped)
        if lease.stop is not None:
            self.stopped = lease.stop
        return lease

    async def send_time(self, tokens: float) -> float:
        async with self.lock:
            # A time this worker could not use in time is dropped, not used late: late
            # ones would go out together with the next worker's, a burst.
            while self._times and self._times[0] < time.time() - STALE_S:
                self._times.popleft()
            if not self._times:
                lease = await self.call(LEASE_BATCH, tokens, 0.0)
                if lease.stop is not None:
                    raise Stopping
                self._times.extend(lease.times)
            return self._times.popleft()

    def drop_times(self) -> None:
        self._times.clear()

    def note(self, row: ResultRow) -> None:
        """A row with an outcome: counted in the next report (the driver's progress)."""
        self.report.ok += row.status == "ok"
        self.report.errors += row.status != "ok"
        if row.completion is not None:
            self.report.prompt_tokens += row.completion.usage.prompt_tokens
            self.report.completion_tokens += row.completion.usage.completion_tokens

    async def flush(self, returned_usd: float = 0.0) -> None:
        """Report what is left (and give back the unused budget) at the end."""
        self.report.returned_usd += returned_usd
        await self.call(0, 0.0, 0.0)


class LeasedLimiter(AdaptiveLimiter):
    def __init__(self, client: LeaseClient, concurrency: int, max_pause: float) -> None:
        super().__init__(concurrency, max_pause=max_pause)
        self.client = client

    async def acquire(self, cost: float = 0.0) -> None:
        await super().acquire(0.0)  # this worker's window, and its own pause
        try:
            delay = await self.client.send_time(cost) - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        except BaseException:
            self.release()
            raise

    def on_rate_limited(self) -> None:
        super().on_rate_limited()
        self.client.report.rate_limited += 1
        self.client.drop_times()

    # The limiter reads the headers; what it learns goes to the account, which paces
    # every worker at once, instead of pacing this one.

    def _set_limit(self, kind: str, per_minute: float) -> None:
        if kind == "requests":
            self.client.report.learned_rpm = per_minute
        else:
            self.client.report.learned_tpm = per_minute

    def _pause(self, now: float, seconds: float, why: str) -> None:
        report = self.client.report
        report.pause_s = max(report.pause_s, seconds)
        self.client.drop_times()


class LeasedBudget(Budget):
    def __init__(self, cap_usd: float | None, client: LeaseClient) -> None:
        super().__init__(cap_usd)
        self.client = client
        self.slice_usd = 0.0
        # Worst cases reserved, by (prompt tokens, fixed): a row gives back what it held.
        self._held: dict[tuple[int, float], list[float]] = {}

    async def ready(
        self, prompt_tokens: int, fixed_usd: float, usd_per_prompt_token: float
    ) -> None:
        """Before a row is reserved: top the slice up to the row's worst case, waiting
        while the budget is out with rows in flight, or stop at the cap."""
        if self.cap_usd is not None:
            await self._first_goes_alone()  # the slice, not the local sums, decides the rest
        need = usd_per_prompt_token * self.prompt_ratio * prompt_tokens + fixed_usd
        while self.cap_usd is not None and self.slice_usd < need:
            async with self.client.lock:
                if self.slice_usd >= need:
                    break  # another of this worker's rows topped it up meanwhile
                # What is left cannot pay for the row: it goes back, and a row's worth or
                # more comes (the account hands out at most half of what is free).
                self.client.report.returned_usd += self.slice_usd
                self.slice_usd = 0.0
                lease = await self.client.call(0, 0.0, BUDGET_ROWS * need, need)
                self.slice_usd += lease.grant_usd
            if lease.stop is not None:
                self.refused_usd = need
                raise BudgetReached
            if lease.wait:
                await asyncio.sleep(BUDGET_WAIT_S)

    def reserve(self, prompt_tokens: int, fixed_usd: float, usd_per_prompt_token: float) -> None:
        if self.cap_usd is None:
            super().reserve(prompt_tokens, fixed_usd, usd_per_prompt_token)
            return
        worst = usd_per_prompt_token * self.prompt_ratio * prompt_tokens + fixed_usd
        if worst > self.slice_usd:
            self.refused_usd = worst
            raise BudgetReached
        self.slice_usd -= worst
        self._held.setdefault((prompt_tokens, fixed_usd), []).append(worst)
        self._usd_per_prompt_token = usd_per_prompt_token
        self._rows += 1
        self._prompt += prompt_tokens
        self._fixed_usd += fixed_usd

    def settle(self, prompt_tokens: int, fixed_usd: float, actual_usd: float) -> None:
        super().settle(prompt_tokens, fixed_usd, actual_usd)
        self.client.report.cost_usd += actual_usd
        if self.cap_usd is not None:
            # What this row held goes back to the slice, less what it cost.
            worst = self._held[(prompt_tokens, fixed_usd)].pop()
            self.slice_usd += worst - actual_usd
