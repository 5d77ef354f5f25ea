"""How long to wait before trying again: what a server's headers say (Retry-After and
`retry-after-ms`, the `x-ratelimit-reset-*` times), else exponential backoff with
jitter. Pure functions; the caller caps what the headers say at `max_retry_after`."""

from __future__ import annotations

import email.utils
import math
import random
import re
import time
from collections.abc import Callable, Mapping

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0


def backoff(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """openai-python's schedule: min(0.5 * 2^(n-1), 8) s, less up to 25% jitter."""
    return min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_MAX_S) * (1 - 0.25 * rand())


def _seconds(value: str) -> float | None:
    """A positive, finite number of seconds, else None ("use the normal backoff")."""
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date).

    As in openai-python, 0, a negative, `nan` or `inf` is no advice at all (None: the
    caller backs off as usual), never "retry at once" or "wait forever"; the caller caps
    what is left at `max_retry_after`.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None and (seconds := _seconds(ms)) is not None:
        return seconds / 1000
    value = headers.get("Retry-After")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # "0", "nan", "soon"...
    wait = when.timestamp() - (time.time() if now is None else now)
    return wait if wait > 0 else None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float | None:
    """`1s`, `6m0s`, `20ms`, `1h2m3.5s` (OpenAI's x-ratelimit-reset-* format) -> seconds."""
    parts = _DURATION.findall(value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


# A reset "in seconds" past this is an epoch timestamp (some servers send one): 31 years.
_EPOCH_FROM = 1e9


def parse_reset(value: str, now: float | None = None) -> float | None:
    """Seconds until an `x-ratelimit-reset-*` time: a duration, or an epoch timestamp.
    None for what is no time at all (`inf`, `nan`, negative, unparsable); the caller caps
    the rest at `max_retry_after`."""
    seconds = parse_duration(value)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    if seconds >= _EPOCH_FROM:
        seconds -= time.time() if now is None else now
        return max(seconds, 0.0)
    return seconds
