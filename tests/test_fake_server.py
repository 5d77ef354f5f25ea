from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pipeline.config.settings import RequestConfig
from pipeline.http.providers.openai import build_payload
from pipeline.testing.fake_server import FakeOptions, caption_for, make_app, stream_events
from tests.fakes import digest_of_file
from tests.helpers import SAMPLES, free_port


def body_for(path: Path, **request: object) -> dict:
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return build_payload(RequestConfig(**request), url)  # type: ignore[arg-type]


async def post(options: FakeOptions, body: dict) -> tuple[int, dict | str, dict]:
    async with TestClient(TestServer(make_app(options))) as client:
        resp = await client.post("/chat/completions", json=body)
        text = await resp.text()
        try:
            return resp.status, json.loads(text), dict(resp.headers)
        except ValueError:
            return resp.status, text, dict(resp.headers)


def test_deterministic_caption_and_published_usage() -> None:
    path = SAMPLES / "checkerboard.png"
    status, answer, _ = asyncio.run(post(FakeOptions(), body_for(path, n=2)))
    assert status == 200
    digest = digest_of_file(path)
    assert [c["message"]["content"] for c in answer["choices"]] == [
        caption_for(digest, 0),
        caption_for(digest, 1),
    ]
    # 1024x1024 on gpt-4o: 765 image tokens; the prompt's text and framing on top.
    assert answer["usage"]["prompt_tokens"] > 765
    assert answer["usage"]["total_tokens"] == (
        answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    )


def test_error_rate_injects_500s_and_429s_with_retry_after() -> None:
    async def many() -> list[tuple[int, dict]]:
        async with TestClient(TestServer(make_app(FakeOptions(error_rate=1.0, seed=1)))) as c:
            out = []
            for _ in range(20):
                resp = await c.post("/chat/completions", json=body_for(SAMPLES / "icon.gif"))
                out.append((resp.status, dict(resp.headers)))
            return out

    answers = asyncio.run(many())
    assert {s for s, _ in answers} == {429, 500}
    assert all(h.get("Retry-After") == "1" for s, h in answers if s == 429)


def test_an_uplink_cap_reads_bodies_whole() -> None:
    """Through the capped reader the answer is the same (its speed: bench/bandwidth.py)."""
    body = body_for(SAMPLES / "sunset.jpg")
    capped = asyncio.run(post(FakeOptions(uplink_mbps=80), body))
    plain = asyncio.run(post(FakeOptions(), body))
    assert capped[0] == plain[0] == 200
    assert capped[1]["choices"] == plain[1]["choices"]
    assert capped[1]["usage"] == plain[1]["usage"]


def test_bad_requests_get_400() -> None:
    status, answer, _ = asyncio.run(post(FakeOptions(), {"model": "gpt:gpt-4o", "messages": []}))
    assert status == 400
    assert "messages" in answer["error"]["message"]
    status, answer, _ = asyncio.run(post(FakeOptions(), {"model": "nope", "messages": []}))
    assert status == 400


def test_stream_events_end_with_usage_and_done() -> None:
    answer = {
        "id": "x",
        "created": 1,
        "model": "m",
        "system_fingerprint": "f",
        "choices": [{"index": 0, "message": {"content": "hello there"}}],
        "usage": {"prompt_tokens": 1},
    }
    events = stream_events(answer)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        == "hello there"
    )
    assert chunks[-1]["usage"] == {"prompt_tokens": 1}


@pytest.mark.timeout(60)
def test_fake_endpoint_command_serves_on_loopback() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-endpoint", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    try:
        data = json.dumps(body_for(SAMPLES / "icon.gif")).encode()
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/chat/completions",
                    data=data,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=5) as resp:
                    answer = json.loads(resp.read())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert answer["choices"][0]["message"]["content"] == caption_for(
            digest_of_file(SAMPLES / "icon.gif")
        )
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_busy_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "fake-endpoint", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"caption: error: --port {port}: cannot listen on 127.0.0.1:{port} (address already in use)"
    ]


def test_the_start_up_line_says_any_key_works_and_how_to_run() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-endpoint", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        second = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(10)
    url = f"http://127.0.0.1:{port}/chat/completions"
    assert first.strip() == f"fake endpoint: {url} (it accepts any key); try:"
    assert (
        second.strip()
        == f"MEMORIES_API_KEY=any caption run data/samples -o out/try --endpoint {url}"
    )
