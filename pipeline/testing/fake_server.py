"""A fake of memories.ai's chat-completions endpoint, for trying jobs without a key.

It answers every image with a deterministic caption (a hash of the image's bytes, or of its
URL), or JSON that fits the requested format, cut off at `max_tokens` as a real server
does (`finish_reason` `length`), and a realistic usage block: text tokens counted with
o200k_base and image tokens by the model's published rule. Each model family's request
and answer are in that family's documented shape (`fake_families.py`). It can add latency and a rate of injected failures (500s and
429s with Retry-After). `caption fake-endpoint` serves it; `--endpoint fake` runs it in
process; the tests build scripted servers on `completion_for`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipeline.config.prices import PriceTable, load_price_table
from pipeline.cost.images import image_tokens
from pipeline.cost.tokens import (
    TOKENS_PER_MESSAGE,
    TOKENS_REPLY_PRIMING,
    o200k,
    schema_tokens,
    text_tokens,
)
from pipeline.sources.images import header_size
from pipeline.testing.fake_families import (
    BadRequest,
    family,
    message_parts,
    requested_format,
    shaped,
)
from pipeline.testing.fake_quality import WRONG, is_wrong, judgment, right_answer, wrong_answer

log = logging.getLogger(__name__)

ASSUMED_URL_SIZE = (1024, 1024)  # the fake does not download URLs


def image_digest(url: str) -> tuple[str, tuple[int, int]]:
    """(sha256 of the image bytes or of the URL, pixel size) for an image's value: a data
    URL, bare base64 (gemini: and qwen: may send that), or a URL the fake does not fetch."""
    if not url.startswith(("data:", "http://", "https://")):
        url = "data:base64," + url
    if url.startswith("data:"):
        try:
            header, encoded = url.split(",", 1)
            data = base64.b64decode(encoded, validate=True)
        except (ValueError, binascii.Error):
            raise BadRequest("image_url is not a valid base64 data URL") from None
        size = header_size(data)
        if size is None:
            raise BadRequest(f"image is not readable ({header.removeprefix('data:')})")
        return hashlib.sha256(data).hexdigest(), size
    return hashlib.sha256(url.encode()).hexdigest(), ASSUMED_URL_SIZE


def caption_for(digest: str, index: int = 0) -> str:
    suffix = f" (choice {index})" if index else ""
    return f"A fake caption for image {digest[:12]}{suffix}."


def _content(
    response_format: Any, schema: dict[str, Any], digest: str, index: int, wrong: bool = False
) -> str:
    """The answer's text: a caption, or JSON that fits the requested format."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema" and isinstance(schema.get("schema"), dict):
        value = right_answer(schema["schema"], digest, index)
        return json.dumps(wrong_answer(value, schema["schema"]) if wrong else value)
    if kind == "json_object":
        return json.dumps({"caption": caption_for(digest, index)})
    return caption_for(digest, index) + (WRONG if wrong else "")


def completion_for(
    body: dict[str, Any], prices: PriceTable, wrong_rates: dict[str, float] | None = None
) -> dict[str, Any]:
    """The fake's answer to a parsed request body (raises BadRequest for a bad one).
    `wrong_rates`: per model, the share of images whose structured answer it gets wrong."""
    model = body.get("model")
    if not isinstance(model, str) or model not in prices:
        raise BadRequest(f"unknown model {model!r}")
    fam = family(model)
    if fam != "gpt" and body.get("stream"):
        raise BadRequest(f"stream is not served for {fam}: models")
    texts, images = message_parts(fam, body)
    if not images:
        raise BadRequest("no image part")
    n = body.get("n", 1)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 1000
    price = prices[model]
    prompt = TOKENS_REPLY_PRIMING + sum(text_tokens(t) for t in texts)
    prompt += TOKENS_PER_MESSAGE * len(body["messages"])
    digests = []
    for image in images:
        digest, (w, h) = image_digest(str(image.get("url", "")))
        digests.append(digest)
        if price.image is not None:
            prompt += image_tokens(price.image, w, h, image.get("detail"))
    response_format = requested_format(fam, body, texts)
    schema = (response_format.get("json_schema") or {}) if isinstance(response_format, dict) else {}
    prompt += schema_tokens(schema or None)
    choices = []
    completion = 0
    for i in range(n):
        wrong = is_wrong(model, digests[0], (wrong_rates or {}).get(model, 0.0))
        content = _content(response_format, schema, digests[0], i, wrong)
        if (verdict := judgment(texts)) is not None:
            structured = isinstance(response_format, dict) and response_format.get("type")
            content = json.dumps({"winner": verdict}) if structured else verdict
        finish = "stop"
        encoded = o200k().encode_ordinary(content)
        if len(encoded) > max_tokens:  # cut off, as a real server does
            content, finish = o200k().decode(encoded[:max_tokens]), "length"
        completion += min(len(encoded), max_tokens)
        choices.append(
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish,
            }
        )
    return shaped(
        fam,
        {
            "id": f"chatcmpl-fake-{digests[0][:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.split(":", 1)[-1],
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        },
    )


def stream_events(answer: dict[str, Any]) -> list[bytes]:
    """The answer as OpenAI-style server-sent `chat.completion.chunk` events."""
    base = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    events = []
    for ch in answer["choices"]:
        text = ch["message"]["content"]
        for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
            delta = {"index": ch["index"], "delta": {"content": piece}, "finish_reason": None}
            events.append({**base, "choices": [delta]})
        events.append(
            {
                **base,
                "choices": [
                    {
                        "index": ch["index"],
                        "delta": {},
                        "finish_reason": ch.get("finish_reason", "stop"),
                    }
                ],
            }
        )
    events.append({**base, "choices": [], "usage": answer["usage"]})
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }


async def respond(
    request: web.Request,
    answer: dict[str, Any],
    stream: bool,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    if not stream:
        return web.json_response(answer, headers=headers)
    resp = web.StreamResponse(headers={**(headers or {}), "Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in stream_events(answer):
        await resp.write(event)
    await resp.write_eof()
    return resp


@dataclass
class FakeOptions:
    latency: float = 0.0
    error_rate: float = 0.0
    seed: int = 0
    # A server-side cap: at most this many requests in any sliding one-second window;
    # past it, 429 (or memories.ai's 0429 envelope in a 200, `rate_limit_form="memories"`).
    rate_limit: int | None = None
    rate_limit_form: str = "openai"
    # A fraction of requests refused with a one-off 429 (Retry-After: 1, no real cap).
    flaky_429: float = 0.0
    # One shared cap on the request bodies read, in Mbit/s: a client's upload link.
    uplink_mbps: float | None = None
    # Per model, the share of images whose structured answer is wrong (a quality knob
    # for `caption compare`): its first field, changed.
    wrong_rates: dict[str, float] = field(default_factory=dict)


class Uplink:
    """A link of `mbps` shared by every request: each chunk read waits its turn, so
    concurrent uploads split the bandwidth as on a real link."""

    def __init__(self, mbps: float) -> None:
        self.bytes_per_s = mbps * 1e6 / 8
        self.free_at = 0.0

    async def read(self, request: web.Request) -> bytes:
        loop = asyncio.get_running_loop()
        parts = []
        async for chunk in request.content.iter_chunked(65_536):
            now = loop.time()
            self.free_at = max(now, self.free_at) + len(chunk) / self.bytes_per_s
            if self.free_at > now:
                await asyncio.sleep(self.free_at - now)
            parts.append(chunk)
        return b"".join(parts)


class RateWindow:
    """A sliding one-second window of admitted requests, answering the way OpenAI does:
    `x-ratelimit-limit-requests` per minute, what remains of it, and when it resets."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.admitted: deque[float] = deque()

    def admit(self, now: float) -> tuple[bool, dict[str, str]]:
        while self.admitted and self.admitted[0] <= now - 1.0:
            self.admitted.popleft()
        ok = len(self.admitted) < self.per_second
        if ok:
            self.admitted.append(now)
        remaining = self.per_second - len(self.admitted)
        reset = self.admitted[0] + 1.0 - now if remaining == 0 else 0.0
        headers = {
            "x-ratelimit-limit-requests": str(self.per_second * 60),
            "x-ratelimit-remaining-requests": str(remaining * 60),
            "x-ratelimit-reset-requests": f"{max(reset, 0.0) * 1000:.0f}ms",
        }
        return ok, headers


def _rate_limited(form: str, headers: dict[str, str]) -> web.Response:
    if form == "memories":
        body = {"code": "0429", "msg": "too many requests", "data": None, "failed": True}
        return web.json_response(body, status=200, headers=headers)
    return web.json_response(
        error_body(429, "Rate limit reached for requests", "rate_limit_exceeded"),
        status=429,
        headers={**headers, "Retry-After": "1"},
    )


def make_app(
    options: FakeOptions | None = None, prices: PriceTable | None = None
) -> web.Application:
    opts = options or FakeOptions()
    table = prices or load_price_table()
    rng = random.Random(opts.seed)
    window = RateWindow(opts.rate_limit) if opts.rate_limit else None
    uplink = Uplink(opts.uplink_mbps) if opts.uplink_mbps else None
    counts = {"requests": 0, "refused": 0}

    async def chat(request: web.Request) -> web.StreamResponse:
        counts["requests"] += 1
        headers: dict[str, str] = {}
        if window is not None:
            ok, headers = window.admit(time.monotonic())
            if not ok:
                counts["refused"] += 1
                return _rate_limited(opts.rate_limit_form, headers)
        if opts.latency:
            await asyncio.sleep(opts.latency)
        if opts.flaky_429 and rng.random() < opts.flaky_429:
            counts["refused"] += 1
            return _rate_limited(opts.rate_limit_form, {})
        if opts.error_rate and rng.random() < opts.error_rate:
            if rng.random() < 0.5:
                return web.json_response(error_body(500, "injected server error"), status=500)
            return web.json_response(
                error_body(429, "injected rate limit", "rate_limit_exceeded"),
                status=429,
                headers={"Retry-After": "1"},
            )
        try:
            body = json.loads(await uplink.read(request)) if uplink else await request.json()
            answer = completion_for(body, table, opts.wrong_rates)
        except (ValueError, BadRequest) as exc:
            return web.json_response(error_body(400, str(exc)), status=400)
        return await respond(request, answer, bool(body.get("stream")), headers)

    async def stats(_request: web.Request) -> web.Response:
        """What the server was sent and what it refused (for benchmarks)."""
        return web.json_response(counts)

    async def warm_up(_app: web.Application) -> None:
        # The BPE file takes about a second to load: a cold first answer would stall
        # every request behind it, and then let them through the rate window at once.
        await asyncio.get_running_loop().run_in_executor(None, o200k)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(warm_up)
    app.router.add_post("/chat/completions", chat)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    return app


class FakeEndpoint:
    """The fake served on 127.0.0.1 from inside a running event loop."""

    def __init__(self, options: FakeOptions | None = None, port: int = 0) -> None:
        self._app = make_app(options)
        self._port = port
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeEndpoint:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/chat/completions"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
