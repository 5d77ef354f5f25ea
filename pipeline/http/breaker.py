"""The circuit breaker: stop a job that cannot work before it fails row by row.

A wrong URL path (404 on every request), a model the server does not serve, a dead host
(connection refused, DNS, TLS): each fails every row the same way, and without a breaker
the run turned 2,000 images into 2,000 error rows, or retried row by row for minutes.

Until the run's first successful answer, failures marked job-level (`ApiError.job_level`)
are counted (a row-level rejection, such as a bad image's 400, shows the job works as
well as a success does). When `TRIP_AFTER` of the same kind arrive in a row, or `TRIP_MIN` of them
spanning `TRIP_SPAN_S` seconds, the breaker trips: the run stops as for a fatal answer
(exit 3). Rows that failed that way meanwhile are held back, not written, so they stay
pending; the first success shows the job works, ends the breaker's watch and releases
them as the ordinary error rows they then are (a poison image's 404 among successes).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.errors import ApiError, FatalApiError, RequestRejected
from pipeline.records import ResultRow

TRIP_AFTER = 24
TRIP_MIN = 3
TRIP_SPAN_S = 10.0


class CircuitBreaker:
    def __init__(self, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.proven = False  # a success was seen: the job works, the watch is over
        self.tripped: FatalApiError | None = None
        self._clock = clock
        self._kind: str | None = None
        self._count = 0
        self._since = 0.0
        self._last: ApiError | None = None
        self._held: list[ResultRow] = []
        self._mixed = False

    def success(self) -> None:
        self.proven = True

    def failure(self, exc: ApiError) -> None:
        """Count a failed attempt; raise FatalApiError when the breaker trips."""
        if self.tripped is not None:
            raise self.tripped
        if self.proven:
            return
        if exc.job_level is None:
            if isinstance(exc, RequestRejected):
                self.proven = True  # the server judged the row itself: the job works
            else:
                self._mixed = True  # a timeout, a 5xx: not the same failure every time
            return
        now = self._clock()
        if exc.job_level != self._kind:
            self._kind, self._count, self._since = exc.job_level, 0, now
        self._count += 1
        self._last = exc
        if self._count >= TRIP_AFTER or (
            self._count >= TRIP_MIN and now - self._since >= TRIP_SPAN_S
        ):
            self.tripped = self._verdict()
            raise self.tripped

    def hold(self, row: ResultRow) -> bool:
        """Keep back an error row that may only say the job is wrong (True if kept)."""
        if self.proven or row.job_level is None:
            return False
        self._held.append(row)
        return True

    def release(self, *, final: bool = False) -> list[ResultRow]:
        """The rows held back, once a success showed they are ordinary error rows; or
        `final`ly, when the verdict did not find the job wrong, whatever the proof."""
        if not (self.proven or final) or not self._held:
            return []
        held, self._held = self._held, []
        return held

    def verdict(self) -> FatalApiError | None:
        """At the end of the rows: if every answer was a job-level failure, the job is
        wrong even below the thresholds (the held rows stay pending)."""
        if self.tripped is None and not self.proven and not self._mixed and self._held:
            self.tripped = self._verdict()
        return self.tripped

    def _verdict(self) -> FatalApiError:
        last = self._last
        said = last.message if last is not None else self._kind
        status = last.http_status if last is not None else None
        return FatalApiError(
            f"every request failed the same way and none succeeded ({self._count} in a row): "
            f"{said}; the endpoint is {self.url}; check [endpoint] url and [request] model"
            f"{path_hint(self.url, status)}. No row was marked failed",
            http_status=status,
        )


def path_hint(url: str, status: int | None) -> str:
    """memories.ai's pages spell the image endpoint's path two ways: the prose and the
    URL it gives say `/iu/`, the curl samples `/ilm/`. When one is not found, say so."""
    if status != 404 or "memories.ai" not in url:
        return ""
    for here, there in (("/iu/", "/ilm/"), ("/ilm/", "/iu/")):
        if here in url:
            return (
                f" (memories.ai's pages spell this path both {here} and {there}; if the "
                f"server does not know this one, try [endpoint] url = "
                f"{url.replace(here, there, 1)!r})"
            )
    return ""
