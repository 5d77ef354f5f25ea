"""One account across many workers: a job's rate limits and budget when it runs on many
processes (the Ray executor), kept by one `Account` that the workers lease from.

A worker does not ask before every request: it leases a few send times and a slice of the
budget at once (`Lease`), and reports what happened since its last lease (`Report`): rows
done, money spent, 429s seen, limits and pauses the server announced. So the account is
off the per-request path, and still:

- the request and token rates are paced globally: send times are handed out one pacing
  interval apart, whoever asks (at 95% of a known requests-per-minute limit);
- a 429 seen by one worker slows all of them: the pace drops by 10% (once a second at
  most), and when no limit is known yet, the pace becomes 90% of the rate the workers
  were just sending at; a server's `remaining: 0` pauses every worker until its reset;
- the budget cap holds across workers: the money spent plus every slice handed out never
  passes it, so no worker can overspend however the others fare.

`Account` is plain Python; `executors/ray.py` runs it as one named Ray actor.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from pipeline.http.limiter import RATE_DECREASE, RATE_RECOVERY_STEP, SHRINK_COOLDOWN_S

RECENT_S = 5.0
DUST_USD = 1e-9
# Of a known requests-per-minute limit. Lower than the local limiter's 99%: requests
# from several processes reach the server with more jitter than one event loop's, and a
# server counting a sliding second refuses the ones that bunch up.
PACE = 0.95


@dataclass
class Report:
    """What a worker saw since its last lease."""

    worker: str = ""
    ok: int = 0
    errors: int = 0
    cost_usd: float = 0.0  # spent: answers priced (settled rows)
    returned_usd: float = 0.0  # budget slice given back (worst cases not spent)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rate_limited: int = 0  # 429s
    learned_rpm: float | None = None  # x-ratelimit-limit-requests
    learned_tpm: float | None = None
    pause_s: float = 0.0  # the server said its budget is empty for this long


@dataclass
class Lease:
    times: list[float]  # wall-clock times (time.time()) at which requests may be sent
    grant_usd: float  # budget the worker may reserve, on top of what it holds
    stop: tuple[str, str] | None = None  # (kind, message): the run stops
    wait: bool = False  # no budget now, but others hold some that may come back: ask again


@dataclass
class Account:
    rpm: float | None = None
    tpm: float | None = None
    cap_usd: float | None = None
    spent_usd: float = 0.0
    max_pause: float = 120.0
    rate_factor: float = 1.0
    paused_until: float = 0.0
    next_free: float = 0.0
    held_usd: dict[str, float] = field(default_factory=dict)  # budget held per worker
    totals: dict[str, float] = field(default_factory=dict)
    stopped: tuple[str, str] | None = None
    _last_shrink: float = float("-inf")
    _issued: deque[float] = field(default_factory=deque)  # send times of the last seconds

    def lease(
        self, n: int, tokens_each: float, want_usd: float, report: Report, need_usd: float = 0.0
    ) -> Lease:
        """Send times for `n` requests, and a budget slice of up to `want_usd` (at least
        `need_usd`, a row's worst case, or none)."""
        now = time.time()
        self._take(report, now)
        if self.stopped is not None:
            return Lease([], 0.0, self.stopped)
        lease = Lease(self._times(n, tokens_each, now), 0.0)
        if want_usd > 0:
            lease.grant_usd = self._grant(report.worker, want_usd, need_usd)
            if lease.grant_usd == 0.0:
                if sum(self.held_usd.values()) > 0:
                    lease.wait = True  # rows in flight may settle below their worst case
                else:
                    self.stop("budget", f"budget cap ${self.cap_usd:g} reached")
                    lease.stop = self.stopped
        return lease

    def stop(self, kind: str, message: str) -> None:
        if self.stopped is None:
            self.stopped = (kind, message)

    def progress(self) -> dict[str, float]:
        return dict(self.totals)

    # -- reports --------------------------------------------------------------------

    def _take(self, r: Report, now: float) -> None:
        for name in (
            "ok",
            "errors",
            "cost_usd",
            "prompt_tokens",
            "completion_tokens",
            "rate_limited",
        ):
            self.totals[name] = self.totals.get(name, 0) + getattr(r, name)
        self.spent_usd += r.cost_usd
        held = self.held_usd.get(r.worker, 0.0) - r.cost_usd - r.returned_usd
        # Below a nano-dollar it is float residue (5e-19 was seen): nothing is held, and
        # a worker waiting for held budget to come back must not wait for it.
        self.held_usd[r.worker] = held if held > DUST_USD else 0.0
        if r.learned_rpm and (self.rpm is None or r.learned_rpm < self.rpm):
            self.rpm = r.learned_rpm
        if r.learned_tpm and (self.tpm is None or r.learned_tpm < self.tpm):
            self.tpm = r.learned_tpm
        if r.pause_s > 0:
            self.paused_until = max(self.paused_until, now + min(r.pause_s, self.max_pause))
        if r.rate_limited:
            if now - self._last_shrink >= SHRINK_COOLDOWN_S:
                self._last_shrink = now
                if self.rpm is None:
                    # No limit known: pace at 90% of what the workers were just sending.
                    recent = sum(1 for t in self._issued if t > now - RECENT_S)
                    self.rpm = max(1.0, recent / RECENT_S * 60 * RATE_DECREASE)
                else:
                    self.rate_factor = max(1 / 64, self.rate_factor * RATE_DECREASE)
        elif r.ok and self.rate_factor < 1.0:
            self.rate_factor = min(1.0, self.rate_factor + RATE_RECOVERY_STEP * r.ok)

    # -- send times and budget slices -----------------------------------------------

    def _interval(self, tokens_each: float) -> float:
        interval = 0.0
        if self.rpm:
            interval = 60.0 / (self.rpm * PACE * self.rate_factor)
        if self.tpm and tokens_each:
            interval = max(interval, tokens_each * 60.0 / (self.tpm * self.rate_factor))
        return interval

    def _times(self, n: int, tokens_each: float, now: float) -> list[float]:
        interval = self._interval(tokens_each)
        start = max(now, self.paused_until, self.next_free if interval else 0.0)
        times = [start + i * interval for i in range(n)]
        self.next_free = start + n * interval
        self._issued.extend(times)
        while self._issued and self._issued[0] < now - RECENT_S:
            self._issued.popleft()
        return times

    def _grant(self, worker: str, want_usd: float, need_usd: float) -> float:
        if self.cap_usd is None:
            return want_usd
        free = self.cap_usd - self.spent_usd - sum(self.held_usd.values())
        if free < need_usd or free <= 0:
            return 0.0
        # Half of what is free at most (but a row's worth): one worker's slice must not
        # starve the others while it still has rows to send.
        grant = min(want_usd, max(need_usd, free / 2), free)
        self.held_usd[worker] = self.held_usd.get(worker, 0.0) + grant
        return grant
