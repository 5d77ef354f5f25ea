"""The one place where concurrency and request rates are bounded, and adapt to the server.

- An in-flight window of at most `concurrency` requests. A rate-limit answer halves it (at
  most once a second, so a burst of 429s from one moment counts once); each success grows
  it back by about one slot per window of successes (additive increase, multiplicative
  decrease). The refused request alone waits its Retry-After (in the worker): one 429 no
  longer holds up every other request.
- A requests-per-minute limit, given (`--rpm`) or learned from `x-ratelimit-limit-requests`
  (per minute, OpenAI's convention), is paced evenly at 99% of it, one request at a
  time: a burst would spill over a server's sliding window. Likewise tokens per minute
  (`--tpm`, `x-ratelimit-limit-tokens`), with a second's worth of burst. A 429 trims the
  pace by 10%; successes restore it.
- Dispatch pauses for everyone only when the server says its budget is empty:
  `x-ratelimit-remaining-*` = 0, until the matching `x-ratelimit-reset-*`. Paced at a
  known requests limit, an empty window that refills within a second (a sliding window
  caught at its edge by timing) costs one request's interval instead: pausing everyone
  for that second cost 3-5% of the rate.

Every wait a server asks for is capped at `max_pause` (`[limits] max_retry_after`): a
reset of `99999`, an epoch time or `1h` must not freeze the run in silence. A pause of
more than a few seconds is logged when it begins.

Waiters queue in FIFO order; only the head waits on the clock, so a release wakes one
coroutine, not all of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from pipeline.http.waits import parse_reset

log = logging.getLogger(__name__)

SHRINK_COOLDOWN_S = 1.0
LOG_PAUSES_OVER_S = 5.0
DEFAULT_MAX_PAUSE_S = 120.0
PACE = 0.99  # of a known requests-per-minute limit
RATE_DECREASE = 0.9
RATE_RECOVERY_STEP = 0.01
MIN_RATE_FACTOR = 1 / 64
# A requests budget that resets within this long, when the pace is known, is a blip.
BLIP_RESET_S = 1.0


class _Bucket:
    """Tokens refill at `rate` per second up to `capacity`; a take may go into debt, which
    delays the next taker, so long-run throughput is exactly the rate. Requests are paced
    with a capacity of one: no burst, and a timer that wakes late loses no time."""

    def __init__(
        self,
        per_minute: float,
        now: float,
        capacity: float | None = None,
        level: float | None = None,
    ) -> None:
        self.rate = per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(self.rate, 1.0)
        self.level = self.capacity if level is None else level
        self.stamp = now

    def _refill(self, now: float, factor: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate * factor)
        self.stamp = now

    def delay(self, now: float, factor: float) -> float:
        self._refill(now, factor)
        # A hair of float error must not turn into an endless series of tiny sleeps.
        return 0.0 if self.level >= -1e-6 else -self.level / (self.rate * factor)

    def take(self, amount: float) -> None:
        self.level -= amount

    def set_rate(self, per_minute: float, now: float, factor: float) -> None:
        self._refill(now, factor)
        self.rate = per_minute / 60.0


def _requests_bucket(per_minute: float, now: float, debt: int = 0) -> _Bucket:
    return _Bucket(per_minute * PACE, now, capacity=1.0, level=-float(debt))


class _Slot:
    """A plain class, not @asynccontextmanager: this runs once per request."""

    __slots__ = ("_cost", "_limiter")

    def __init__(self, limiter: AdaptiveLimiter, cost: float) -> None:
        self._limiter = limiter
        self._cost = cost

    async def __aenter__(self) -> None:
        await self._limiter.acquire(self._cost)

    async def __aexit__(self, *exc: object) -> None:
        self._limiter.release()


class AdaptiveLimiter:
    def __init__(
        self,
        concurrency: int,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        max_pause: float = DEFAULT_MAX_PAUSE_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        now = clock()
        self.max_window = concurrency
        self.window = float(concurrency)
        self.in_flight = 0
        self.rate_factor = 1.0
        self.paused_until = 0.0
        self.max_pause = max_pause
        self.shrinks = 0
        self.rate_limited = 0  # 429s seen
        self._last_shrink = float("-inf")
        self._clock = clock
        self._sleep = sleep
        # Limits per minute: what the user set, and what the server said.
        self._limits = {"requests": rpm, "tokens": tpm}
        self._learned: dict[str, int] = {}
        self._rpm = _requests_bucket(rpm, now) if rpm else None
        self._tpm = _Bucket(tpm, now) if tpm else None
        # Dispatch times of the last second, until a request rate is known: a learned
        # limit starts in debt for them, so the first second is not counted twice.
        self._recent: deque[float] | None = None if rpm else deque()
        self._queue: deque[asyncio.Event] = deque()

    # -- acquiring -------------------------------------------------------------------

    def _delay(self, cost: float) -> float:
        now = self._clock()
        delay = max(self.paused_until - now, 0.0)
        for bucket in (self._rpm, self._tpm):
            if bucket is not None:
                delay = max(delay, bucket.delay(now, self.rate_factor))
        return delay

    def _has_slot(self) -> bool:
        return self.in_flight < max(int(self.window), 1)

    def _take(self, cost: float) -> None:
        self.in_flight += 1
        if self._rpm is not None:
            self._rpm.take(1)
        elif self._recent is not None:
            now = self._clock()
            self._recent.append(now)
            while self._recent[0] <= now - 1.0:
                self._recent.popleft()
        if self._tpm is not None:
            self._tpm.take(cost)

    async def acquire(self, cost: float = 0.0) -> None:
        """Wait for a slot; `cost` is the request's token estimate (for the TPM cap)."""
        if not self._queue and self._has_slot() and self._delay(cost) == 0:
            self._take(cost)
            return
        me = asyncio.Event()
        self._queue.append(me)
        try:
            while True:
                if self._queue[0] is me:
                    delay = self._delay(cost)
                    if delay > 0:
                        await self._sleep(delay)
                        continue
                    if self._has_slot():
                        self._take(cost)
                        return
                me.clear()
                await me.wait()
        finally:
            self._queue.remove(me)
            self._wake()

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        if self._queue:
            self._queue[0].set()

    def slot(self, cost: float = 0.0) -> _Slot:
        """`async with limiter.slot(tokens):` holds one in-flight slot for the block."""
        return _Slot(self, cost)

    def held_back(self) -> str:
        """Why dispatch waits right now, for the progress bar ('' when it does not)."""
        now = self._clock()
        if self.paused_until > now:
            return "paused by the server"
        if self._queue and not self._has_slot():
            return "window full"
        if self._queue:
            return "paced"
        return ""

    # -- feedback --------------------------------------------------------------------

    def on_success(self) -> None:
        if self.window < self.max_window:
            self.window = min(self.max_window, self.window + 1.0 / self.window)
            self._wake()
        if self.rate_factor < 1.0:
            self.rate_factor = min(1.0, self.rate_factor + RATE_RECOVERY_STEP)

    def on_rate_limited(self) -> None:
        """A 429: slow down (once per burst of them). No pause for everyone: that is for
        a server that says its budget is empty (`observe_headers`)."""
        self.rate_limited += 1
        now = self._clock()
        if now - self._last_shrink >= SHRINK_COOLDOWN_S:
            self._last_shrink = now
            self.shrinks += 1
            self.window = max(1.0, self.window / 2)
            self.rate_factor = max(MIN_RATE_FACTOR, self.rate_factor * RATE_DECREASE)

    def observe_headers(self, headers: Mapping[str, str], *, refused: bool = False) -> None:
        """Learn `x-ratelimit-limit-*`, and honour `x-ratelimit-remaining-*` = 0 until the
        matching reset. `refused`: these came with a 429."""
        for kind in ("requests", "tokens"):
            limit = headers.get(f"x-ratelimit-limit-{kind}")
            if limit is not None:
                self._learn(kind, limit)
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            reset = headers.get(f"x-ratelimit-reset-{kind}")
            if remaining is None or reset is None:
                continue
            try:
                exhausted = float(remaining) <= 0
            except ValueError:
                continue
            if not exhausted or (wait := parse_reset(reset)) is None:
                continue
            if kind == "requests" and self._rpm is not None and wait <= BLIP_RESET_S:
                # Paced at a known limit, an empty window that refills within a second is
                # a blip of timing, not a spent budget. A request it admitted costs
                # nothing; one it refused costs one interval (the refused request itself
                # waits its Retry-After), not a pause of every request until the reset.
                if refused:
                    self._rpm.take(1)
                continue
            self._pause(self._clock(), wait, f"x-ratelimit-remaining-{kind}: 0")

    def _learn(self, kind: str, value: str) -> None:
        try:
            per_minute = float(value)
        except ValueError:
            return
        if not math.isfinite(per_minute) or per_minute < 1 or self._learned.get(kind) == per_minute:
            return
        self._learned[kind] = int(per_minute)
        self._set_limit(kind, per_minute)

    def _set_limit(self, kind: str, per_minute: float) -> None:
        """Pace at a limit the server announced (`requests` or `tokens` per minute), or
        the user's, whichever is lower."""
        given = self._limits[kind]
        limit = min(given, per_minute) if given else per_minute
        now = self._clock()
        if kind == "requests":
            if self._rpm is None:
                # In debt for what was sent in the last second, before the limit was known.
                self._rpm = _requests_bucket(limit, now, debt=len(self._recent or ()))
                self._recent = None
            else:
                self._rpm.set_rate(limit * PACE, now, self.rate_factor)
        elif self._tpm is None:
            self._tpm = _Bucket(limit, now)
        else:
            self._tpm.set_rate(limit, now, self.rate_factor)

    def _pause(self, now: float, seconds: float, why: str) -> None:
        """Hold all dispatch for `seconds`, at most `max_pause`."""
        seconds = min(seconds, self.max_pause)
        until = now + seconds
        if until <= self.paused_until:
            return
        if seconds > LOG_PAUSES_OVER_S and self.paused_until <= now:
            log.warning("rate limited (%s): pausing all requests for %.0f s", why, seconds)
        self.paused_until = until
