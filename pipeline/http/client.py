"""One HTTP call to a chat-completions endpoint.

`post_completion` sends one request and returns a `Completion` or raises one of the typed
errors of `pipeline.errors`; what an answer means is `pipeline.http.answer`'s to say. It reads
at most `max_response_bytes` of any answer, follows only same-origin 307/308 redirects,
and does not retry: the retry policy wraps it from outside (`pipeline.engine.captioner`). The
session is a parameter, so tests point it at a local server.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from pipeline.errors import (
    ApiError,
    FatalApiError,
    ResponseTooLarge,
    TransientError,
)
from pipeline.http.answer import classify, loads
from pipeline.http.providers import Provider
from pipeline.http.providers.openai import OpenAIShapes
from pipeline.http.stream import assemble_stream
from pipeline.records import Completion

DEFAULT_MAX_RESPONSE_BYTES = 32_000_000
MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    headers: Mapping[str, str]
    timeout: float
    secret: str  # scrubbed from anything the server echoes back
    client_timeout: aiohttp.ClientTimeout
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    provider: Provider = field(default_factory=OpenAIShapes)  # decodes its answers
    model: str = ""  # the job's model: a rejection that names it is the job's, not a row's

    @classmethod
    def create(
        cls,
        url: str,
        api_key: str,
        auth_scheme: str,
        timeout: float,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        provider: Provider | None = None,
        model: str = "",
    ) -> Endpoint:
        value = f"Bearer {api_key}" if auth_scheme == "bearer" else api_key
        headers = {"Authorization": value, "Content-Type": "application/json"}
        return cls(
            url=url,
            headers=headers,
            timeout=timeout,
            secret=api_key,
            client_timeout=aiohttp.ClientTimeout(total=timeout),
            max_response_bytes=max_response_bytes,
            provider=provider or OpenAIShapes(),
            model=model,
        )

    def redact(self, text: str) -> str:
        return text.replace(self.secret, "[redacted]") if self.secret else text


async def _chunks(resp: aiohttp.ClientResponse, cap: int) -> AsyncIterator[bytes]:
    """The body as it arrives (decompressed), stopped with ResponseTooLarge once it passes
    `cap` bytes: a server that sends without end must not fill the memory."""
    if resp.content_length is not None and resp.content_length > cap:
        raise _too_large(cap)
    total = 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
        if total > cap:
            raise _too_large(cap)
        yield chunk


def _too_large(cap: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"answer larger than {cap / 1e6:g} MB; reading stopped there ([limits] max_response_mb)",
        http_status=200,
    )


async def _read(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    length = resp.content_length
    if length is not None and length <= cap and "Content-Encoding" not in resp.headers:
        # The usual answer: its length is declared and within the cap, and aiohttp reads
        # no more than it. Chunk by chunk is for the rest: chunked, over the cap, or
        # compressed (a small gzip body can inflate to gigabytes).
        return await resp.read()
    parts = [chunk async for chunk in _chunks(resp, cap)]
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _lines(resp: aiohttp.ClientResponse, cap: int) -> AsyncIterator[bytes]:
    """Lines of a server-sent event stream, of any length up to the cap (aiohttp's own
    line reader refuses lines over 128 KiB with an exception of its own)."""
    pending = bytearray()
    async for chunk in _chunks(resp, cap):
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, rest = pending.split(b"\n")
        pending = bytearray(rest)
        for line in lines:
            yield bytes(line)
    if pending:
        yield bytes(pending)


def _redirect(resp: aiohttp.ClientResponse, endpoint: Endpoint) -> str:
    """Where a same-origin 307/308 leads (the POST is re-sent there as it was). Any other
    redirect is refused for the whole job: a 301/302/303 would turn the POST into a GET
    without the image, and another origin must never receive the images or the key."""
    location = resp.headers.get("Location")
    target = resp.url.join(URL(location)) if location else None
    same_origin = target is not None and target.origin() == URL(endpoint.url).origin()
    if target is not None and resp.status in (307, 308) and same_origin:
        return str(target)
    where = f"to {target}" if target is not None else "without a Location"
    raise FatalApiError(
        endpoint.redact(
            f"HTTP {resp.status}: the endpoint {endpoint.url} redirects {where}; caption "
            "does not follow it (only a 307/308 within the same origin is followed): set "
            "[endpoint] url to the address that answers"
        ),
        http_status=resp.status,
    )


@dataclass(frozen=True, slots=True)
class Answer:
    completion: Completion
    http_status: int
    headers: Mapping[str, str]


async def post_completion(
    session: aiohttp.ClientSession, endpoint: Endpoint, body: bytes, *, stream: bool
) -> Answer:
    """Send one request. Raises TransientError, RequestRejected or FatalApiError; any error
    carries the answer's headers in `.headers` so the rate limiter can read them."""
    url = endpoint.url
    try:
        for _ in range(MAX_REDIRECTS + 1):
            async with session.post(
                url,
                data=body,
                headers=endpoint.headers,
                timeout=endpoint.client_timeout,
                allow_redirects=False,
            ) as resp:
                if 300 <= resp.status < 400:
                    url = _redirect(resp, endpoint)
                    continue
                return await _answer(resp, endpoint, stream)
        raise FatalApiError(
            f"the endpoint {endpoint.url} redirected more than {MAX_REDIRECTS} times"
        )
    except TimeoutError:
        raise TransientError(f"timed out after {endpoint.timeout:g} s") from None
    except aiohttp.ClientPayloadError as exc:
        raise TransientError(f"response cut short ({type(exc).__name__})") from None
    except aiohttp.ClientConnectorError as exc:
        # No connection at all: transient on its own, job-level if it never works.
        failure = _connect_failure(exc)
        error = TransientError(f"{failure} ({exc.host}:{exc.port})")
        error.job_level = failure
        error.sent = False
        raise error from None
    except aiohttp.ClientConnectionError as exc:
        # Reset, server disconnected: the way to the server failed.
        raise TransientError(f"connection failed ({type(exc).__name__})") from None
    except aiohttp.ClientError as exc:
        # Anything else the HTTP client raises (a malformed answer): retried like any
        # transient failure, bounded by max_attempts, never a crash.
        raise TransientError(f"HTTP client error ({type(exc).__name__})") from None


def _connect_failure(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS failure"
    if isinstance(exc.os_error, socket.gaierror):
        return "DNS failure: no such host"
    if isinstance(exc.os_error, ConnectionRefusedError):
        return "connection refused"
    return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"


async def _answer(resp: aiohttp.ClientResponse, endpoint: Endpoint, stream: bool) -> Answer:
    headers = resp.headers
    status = resp.status
    cap = endpoint.max_response_bytes
    try:
        if not 200 <= status < 300:
            raise classify(status, await _read(resp, cap), headers, endpoint, endpoint.model)
        if stream and resp.content_type == "text/event-stream":
            parsed: Any = await assemble_stream(_lines(resp, cap), endpoint)
        else:
            try:
                parsed = loads(await _read(resp, cap))
            except ValueError:
                raise TransientError(
                    f"HTTP {status} with a body that is not valid JSON", http_status=status
                ) from None
        return Answer(endpoint.provider.completion(parsed, status, endpoint), status, headers)
    except ApiError as exc:
        exc.headers = headers
        raise
