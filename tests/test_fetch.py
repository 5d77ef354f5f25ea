"""`http/fetch.py` against a real server: images fetched many at once, by the run's rules
(retries, Retry-After, a size cap that stops reading, a timeout), and each failure named."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from aiohttp import web

from pipeline.http import waits
from pipeline.http.fetch import FetchRules, fetch_many
from tests.fakes import serve_in_thread

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 100


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Counter[str]]]:
    monkeypatch.setattr(waits, "BACKOFF_BASE_S", 0.01)
    hits: Counter[str] = Counter()
    busy_until = {"n": 2}

    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        hits[name] += 1
        if name == "flaky.png" and hits[name] <= busy_until["n"]:
            return web.Response(status=503)
        if name == "later.png" and hits[name] == 1:
            return web.Response(status=429, headers={"Retry-After": "0.2"})
        if name == "gone.png":
            return web.Response(status=404)
        if name == "secret.png":
            return web.Response(status=403)
        if name == "hangs.png":
            await asyncio.sleep(30)
        if name == "huge.png":
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(1000):  # 100 MB if it were read whole
                await resp.write(b"y" * 100_000)
            return resp
        if name == "range.png":
            return web.Response(body=PNG[: int(request.headers["Range"].split("-")[1]) + 1])
        return web.Response(body=PNG)

    app = web.Application()
    app.router.add_get("/{name}", handle)
    with serve_in_thread(app) as url:
        yield url, hits


def test_images_are_fetched_retried_and_failures_named(site: tuple[str, Counter[str]]) -> None:
    url, hits = site
    names = ["a.png", "flaky.png", "later.png", "gone.png", "secret.png"]
    rules = FetchRules(max_bytes=1000, attempts=3)
    started = time.monotonic()
    got = fetch_many([f"{url}/{n}" for n in names], rules)
    by_name = dict(zip(names, got, strict=True))
    assert by_name["a.png"] == PNG
    assert by_name["flaky.png"] == PNG
    assert hits["flaky.png"] == 3  # two 503s, then served
    assert by_name["later.png"] == PNG
    assert hits["later.png"] == 2
    assert time.monotonic() - started >= 0.2  # its Retry-After was waited out
    assert isinstance(by_name["gone.png"], FileNotFoundError)
    assert isinstance(by_name["secret.png"], PermissionError)
    assert hits["gone.png"] == hits["secret.png"] == 1  # not tried again


def test_attempts_run_out_and_the_status_is_named(site: tuple[str, Counter[str]]) -> None:
    url, hits = site
    (got,) = fetch_many([f"{url}/flaky.png"], FetchRules(max_bytes=1000, attempts=2))
    assert isinstance(got, OSError)
    assert "HTTP 503" in str(got)
    assert hits["flaky.png"] == 2


def test_a_huge_answer_is_read_one_byte_past_the_cap_not_whole(
    site: tuple[str, Counter[str]],
) -> None:
    url, _ = site
    (got,) = fetch_many([f"{url}/huge.png"], FetchRules(max_bytes=5001))
    assert isinstance(got, bytes)
    assert len(got) == 5001  # the caller sees it is over 5000


def test_a_hanging_server_times_out(site: tuple[str, Counter[str]]) -> None:
    url, hits = site
    started = time.monotonic()
    (got,) = fetch_many([f"{url}/hangs.png"], FetchRules(max_bytes=1000, timeout_s=0.3, attempts=2))
    assert isinstance(got, OSError)
    assert "Timeout" in str(got)
    assert hits["hangs.png"] == 2
    assert time.monotonic() - started < 5


def test_first_bytes_only_asks_for_a_range(site: tuple[str, Counter[str]]) -> None:
    url, _ = site
    (got,) = fetch_many([f"{url}/range.png"], FetchRules(max_bytes=8, first_bytes=True))
    assert got == PNG[:8]
