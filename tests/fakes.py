"""A scripted OpenAI-compatible server on 127.0.0.1 for the tests.

It runs in a thread with its own event loop, so code under test may call `asyncio.run` or
run in a subprocess. Answers are scripted per image (by the SHA-256 of the image bytes, or
of the URL): a list of actions consumed one per request, then the default. It records every
request it was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from pipeline.config.prices import load_price_table
from pipeline.testing.fake_families import family, message_parts
from pipeline.testing.fake_server import BadRequest, completion_for, image_digest, respond


@dataclass(frozen=True)
class Reply:
    """Answer with this status, JSON body (or raw bytes) and headers; body None = a real
    completion."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"  # of a raw body


OK = Reply()
DROP = "drop"  # close the connection without answering
HANG = "hang"  # never answer; the client's timeout fires
TRUNCATED = "truncated"  # a 200 whose JSON body is cut off
ENDLESS = "endless"  # a 200 whose body never ends (bounded here at 1 GB)


def digest_of_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Seen:
    digest: str
    body: dict[str, Any]
    headers: dict[str, str]


class ScriptedServer:
    def __init__(self) -> None:
        self.plans: dict[str, list[Any]] = {}
        self.default: Any = OK
        self.seen: list[Seen] = []
        self.answered: Counter[str] = Counter()  # completions sent back in full
        # Called with the number of requests received so far, as each one arrives.
        self.on_request: Callable[[int], None] | None = None
        self.delay = 0.0  # seconds before every answer (a slow endpoint)
        self.prices = load_price_table()
        self.url = ""
        self._lock = threading.Lock()

    # -- scripting --------------------------------------------------------------------

    def plan(self, digest: str, *actions: Any) -> None:
        self.plans[digest] = list(actions)

    def count(self, digest: str | None = None) -> int:
        with self._lock:
            if digest is None:
                return len(self.seen)
            return sum(1 for s in self.seen if s.digest == digest)

    def requests_by_digest(self) -> Counter[str]:
        with self._lock:
            return Counter(s.digest for s in self.seen)

    # -- serving ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:  # the image in whichever family's shape the model's prefix names
            _, images = message_parts(family(str(body.get("model", ""))), body)
            digest, _ = image_digest(images[0]["url"])
        except (IndexError, BadRequest):
            digest = "?"
        with self._lock:
            self.seen.append(Seen(digest, body, dict(request.headers)))
            queue = self.plans.get(digest)
            action = queue.pop(0) if queue else self.default
            received = len(self.seen)
        if self.on_request is not None:
            self.on_request(received)
        if self.delay:
            await asyncio.sleep(self.delay)
        if action == DROP:
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(0.05)
            return web.Response(status=200)
        if action == HANG:
            await asyncio.sleep(3600)
        if action == ENDLESS:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(b'{"choices": [{"index": 0, "message": {"content": "')
            for _ in range(16_384):
                await response.write(b"x" * 65_536)
            return response
        if action == TRUNCATED:
            return web.Response(
                body=b'{"id": "x", "choices": [{"inde', content_type="application/json"
            )
        assert isinstance(action, Reply)
        if action.raw is not None:
            return web.Response(
                body=action.raw,
                status=action.status,
                headers=action.headers,
                content_type=action.content_type,
            )
        if action.body is not None:
            return web.json_response(action.body, status=action.status, headers=action.headers)
        try:
            answer = completion_for(body, self.prices)
        except BadRequest as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        response = await respond(request, answer, bool(body.get("stream")), action.headers)
        with self._lock:
            self.answered[digest] += 1
        return response


@contextmanager
def serve_in_thread(app: web.Application) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 from a thread with its own loop; yields the base URL.

    On exit the app is cleaned up on its own loop (handlers cancelled, files closed)
    before the loop closes, so nothing is left for the garbage collector to complain about.
    """
    ready = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        stop = asyncio.Event()
        state.update(loop=loop, stop=stop, url=f"http://127.0.0.1:{runner.addresses[0][1]}")
        ready.set()
        loop.run_until_complete(stop.wait())
        loop.run_until_complete(runner.cleanup())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the test server did not start")
    try:
        yield state["url"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/chat/completions", server.handle)
    with serve_in_thread(app) as base:
        server.url = f"{base}/chat/completions"
        yield server


def json_error(status: int, message: str, code: str | None = None, **headers: str) -> Reply:
    return Reply(
        status=status,
        body={"error": {"message": message, "type": "api_error", "code": code}},
        headers=headers,
    )


def memories_error(status: int, message: str) -> Reply:
    return Reply(status=status, body={"code": status, "msg": message, "data": None})
