"""Images over http(s), many at once with aiohttp: whole, for `--fetch-urls`, or their
first bytes (a Range request), for the estimate's `--probe-urls`.

With the run's rules: a timeout per request, at most `max_bytes` read from any answer
(one byte more tells that an image is over the cap, without reading the rest), and
transient failures (a dropped connection, a timeout, 408, 409, 429, 5xx) tried again
after Retry-After (capped) or backoff, up to `attempts` tries. What a URL gives is its
bytes, or why it gave none, as an exception: 404 a FileNotFoundError, 401 and 403 a
PermissionError, anything else an OSError naming the status or the failure.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from pipeline.http.waits import backoff, parse_retry_after

RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class FetchRules:
    max_bytes: int  # read at most this many bytes of each answer
    timeout_s: float = 60.0
    attempts: int = 3
    max_retry_after: float = 60.0
    concurrency: int = 16
    first_bytes: bool = False  # ask for the first `max_bytes` bytes only (HTTP Range)


class _Again(Exception):
    def __init__(self, why: OSError, wait: float | None = None) -> None:
        self.why, self.wait = why, wait


def fetch_many(urls: list[str], rules: FetchRules) -> list[bytes | BaseException]:
    """Each URL's bytes (or why not), in order, fetched concurrently. Blocking: it runs
    an event loop of its own, so call it from a thread, not from a running loop."""
    return asyncio.run(fetch_all(urls, rules)) if urls else []


async def fetch_all(urls: list[str], rules: FetchRules) -> list[bytes | BaseException]:
    sem = asyncio.Semaphore(rules.concurrency)
    connector = aiohttp.TCPConnector(limit=rules.concurrency)
    timeout = aiohttp.ClientTimeout(total=rules.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(url: str) -> bytes | BaseException:
            async with sem:
                return await _fetch(session, url, rules)

        return await asyncio.gather(*(one(u) for u in urls))


async def _fetch(session: aiohttp.ClientSession, url: str, rules: FetchRules) -> bytes | OSError:
    headers = {"Range": f"bytes=0-{rules.max_bytes - 1}"} if rules.first_bytes else {}
    for attempt in range(1, rules.attempts + 1):
        try:
            return await _once(session, url, headers, rules.max_bytes)
        except _Again as again:
            if attempt == rules.attempts:
                return again.why
            wait = again.wait if again.wait is not None else backoff(attempt)
            await asyncio.sleep(min(wait, rules.max_retry_after))
        except OSError as exc:
            return exc
    raise AssertionError("unreachable: the last attempt returns")


async def _once(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], max_bytes: int
) -> bytes:
    try:
        async with session.get(url, headers=headers) as resp:
            if resp.status in RETRY_STATUSES or resp.status >= 500:
                why = OSError(f"HTTP {resp.status}")
                raise _Again(why, parse_retry_after(resp.headers))
            if resp.status == 404:
                raise FileNotFoundError(url)
            if resp.status in (401, 403):
                raise PermissionError(url)
            if resp.status not in (200, 206):
                raise OSError(f"HTTP {resp.status}")
            # `read(n)` gives what has arrived, up to n: read on to n bytes or the end.
            parts, got = [], 0
            while got < max_bytes and (part := await resp.content.read(max_bytes - got)):
                parts.append(part)
                got += len(part)
            return b"".join(parts)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
        raise _Again(OSError(f"{type(exc).__name__}: {exc}".rstrip(": "))) from None
    except aiohttp.ClientError as exc:  # an invalid URL, a redirect loop...
        raise OSError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
