"""The transport: one POST, answers read up to a cap, redirects followed only when safe."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web

from pipeline.errors import FatalApiError, ResponseTooLarge
from pipeline.http.client import Answer, Endpoint, post_completion
from tests.fakes import serve_in_thread

COMPLETION = {
    "id": "c1",
    "choices": [{"index": 0, "message": {"content": "a cat"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2},
}
BODY = json.dumps({"model": "gpt:gpt-4o", "image": "x" * 1000}).encode()


class Sent:
    """What each path of a test server was sent: method and body size."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.sizes: list[int] = []


def app_with(routes: dict[str, web.RequestHandler | None], sent: Sent) -> web.Application:
    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        sent.calls[(request.method, request.path)] += 1
        sent.sizes.append(len(body))
        handler = routes[request.path]
        assert handler is not None
        return await handler(request)

    app = web.Application()
    for path in routes:
        app.router.add_route("*", path, record)
    return app


async def ok(_request: web.Request) -> web.StreamResponse:
    return web.json_response(COMPLETION)


@pytest.fixture
def other() -> Iterator[tuple[str, Sent]]:
    """Another origin, which must never see a request."""
    sent = Sent()
    with serve_in_thread(app_with({"/chat/completions": ok}, sent)) as base:
        yield base, sent


def post(url: str, *, stream: bool = False, cap: int = 1_000_000) -> Answer:
    async def go() -> Answer:
        endpoint = Endpoint.create(url, "sk-secret", "raw", 10, max_response_bytes=cap)
        async with aiohttp.ClientSession() as session:
            return await post_completion(session, endpoint, BODY, stream=stream)

    return asyncio.run(go())


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_origin_is_refused_naming_it(
    status: int, other: tuple[str, Sent]
) -> None:
    other_base, other_sent = other
    target = f"{other_base}/chat/completions"

    async def moved(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": target})

    sent = Sent()
    with (
        serve_in_thread(app_with({"/chat/completions": moved}, sent)) as base,
        pytest.raises(FatalApiError) as info,
    ):
        post(f"{base}/chat/completions")
    assert f"HTTP {status}" in info.value.message
    assert f"redirects to {target}" in info.value.message
    assert "[endpoint] url" in info.value.message
    assert "sk-secret" not in info.value.message
    assert other_sent.calls == Counter()  # neither the image nor the key left the origin


def test_a_same_origin_307_is_followed_with_the_same_body() -> None:
    async def moved(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": "/v2/chat/completions"})

    sent = Sent()
    routes = {"/chat/completions": moved, "/v2/chat/completions": ok}
    with serve_in_thread(app_with(routes, sent)) as base:
        answer = post(f"{base}/chat/completions")
    assert answer.completion.choices[0].content == "a cat"
    assert sent.calls == Counter(
        {("POST", "/chat/completions"): 1, ("POST", "/v2/chat/completions"): 1}
    )
    assert sent.sizes == [len(BODY), len(BODY)]


def test_a_same_origin_301_is_refused_too() -> None:
    """A 301/302 would be followed as a GET without the image, and its answer stored."""

    async def moved(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=301, headers={"Location": "/v2/chat/completions"})

    routes = {"/chat/completions": moved, "/v2/chat/completions": ok}
    sent = Sent()
    with (
        serve_in_thread(app_with(routes, sent)) as base,
        pytest.raises(FatalApiError, match=r"HTTP 301: .* redirects to .*/v2/chat"),
    ):
        post(f"{base}/chat/completions")
    assert sent.calls == Counter({("POST", "/chat/completions"): 1})


def test_a_redirect_loop_ends() -> None:
    async def loop(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=308, headers={"Location": "/chat/completions"})

    sent = Sent()
    with (
        serve_in_thread(app_with({"/chat/completions": loop}, sent)) as base,
        pytest.raises(FatalApiError, match="redirected more than 5 times"),
    ):
        post(f"{base}/chat/completions")
    assert sum(sent.calls.values()) == 6


async def endless(request: web.Request) -> web.StreamResponse:
    """A body without end, as a broken or hostile server sends one."""
    stream = request.query.get("stream") == "1"
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream" if stream else "application/json"}
    )
    await response.prepare(request)
    await response.write(
        b'data: {"choices": [{"index": 0, "delta": {"content": "' if stream else b"{"
    )
    chunk = b"x" * 65_536
    for _ in range(100_000):  # bounded: 6.5 GB at most, but the client stops far sooner
        await response.write(chunk)
    return response


@pytest.mark.timeout(30)
@pytest.mark.parametrize("stream", [False, True])
def test_an_endless_answer_stops_at_the_cap(stream: bool) -> None:
    sent = Sent()
    with serve_in_thread(app_with({"/chat/completions": endless}, sent)) as base:
        url = f"{base}/chat/completions" + ("?stream=1" if stream else "")
        with pytest.raises(ResponseTooLarge, match=r"larger than 2 MB.*max_response_mb"):
            post(url, stream=stream, cap=2_000_000)


def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    async def big(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=b" " * 3_000_000, content_type="application/json")

    sent = Sent()
    with (
        serve_in_thread(app_with({"/chat/completions": big}, sent)) as base,
        pytest.raises(ResponseTooLarge),
    ):
        post(f"{base}/chat/completions", cap=2_000_000)


def test_a_long_stream_event_is_read_whole() -> None:
    """aiohttp's own line reader refuses lines over 128 KiB; an answer may be longer."""
    text = "y" * 300_000

    async def long_event(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "s", "choices": [{"index": 0, "delta": {"content": text}}]}
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        for event in (chunk, end):
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    sent = Sent()
    with serve_in_thread(app_with({"/chat/completions": long_event}, sent)) as base:
        answer = post(f"{base}/chat/completions", stream=True)
    assert answer.completion.choices[0].content == text


def test_a_small_compressed_answer_that_inflates_past_the_cap_is_stopped() -> None:
    import gzip

    bomb = gzip.compress(b'{"id": "' + b"z" * 5_000_000 + b'"}')
    assert len(bomb) < 100_000

    async def gzipped(_request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    sent = Sent()
    with (
        serve_in_thread(app_with({"/chat/completions": gzipped}, sent)) as base,
        pytest.raises(ResponseTooLarge),
    ):
        post(f"{base}/chat/completions", cap=2_000_000)
