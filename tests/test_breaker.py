"""The circuit breaker: a job that cannot work stops early, rows pending; a poison row
among successes stays an ordinary error row."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from click.testing import Result

from pipeline.errors import FatalApiError, RequestRejected, TransientError
from pipeline.http import breaker as breaker_module
from pipeline.http.breaker import TRIP_AFTER, CircuitBreaker
from pipeline.records import ResultRow
from tests.fakes import Reply, ScriptedServer, digest_of_file, json_error
from tests.helpers import by_name, distinct_images, results, run

pytestmark = pytest.mark.usefixtures("fast_backoff")


def job_level(message: str, kind: str) -> TransientError:
    exc = TransientError(message)
    exc.job_level = kind
    return exc


def error_row(i: int, kind: str | None) -> ResultRow:
    return ResultRow(
        id=f"r{i}",
        source="s",
        status="error",
        attempts=1,
        latency_s=0.0,
        finished_at_ms=0,
        job_level=kind,
    )


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_trips_after_a_run_of_the_same_job_level_failure() -> None:
    b = CircuitBreaker("http://h/x", clock=Clock())
    refused = job_level("connection refused (h:1)", "connection refused")
    for _ in range(TRIP_AFTER - 1):
        b.failure(refused)
    with pytest.raises(FatalApiError) as info:
        b.failure(refused)
    message = info.value.message
    assert f"({TRIP_AFTER} in a row)" in message
    assert "connection refused (h:1)" in message
    assert "the endpoint is http://h/x" in message
    with pytest.raises(FatalApiError):
        b.failure(TransientError("anything"))  # once tripped, every attempt stops


def test_trips_on_a_few_failures_spread_over_time() -> None:
    clock = Clock()
    b = CircuitBreaker("u", clock=clock)
    dns = job_level("DNS failure", "DNS failure")
    b.failure(dns)
    clock.t += breaker_module.TRIP_SPAN_S / 2
    b.failure(dns)
    clock.t += breaker_module.TRIP_SPAN_S / 2
    with pytest.raises(FatalApiError):
        b.failure(dns)


def test_a_success_or_a_row_rejection_ends_the_watch_and_releases_held_rows() -> None:
    for proof in ("success", "rejection"):
        b = CircuitBreaker("u", clock=Clock())
        assert b.hold(error_row(1, "HTTP 404"))
        assert not b.hold(error_row(2, None))  # an ordinary error row is never held
        assert b.release() == []
        if proof == "success":
            b.success()
        else:
            b.failure(RequestRejected("HTTP 400: bad image"))
        assert [r.id for r in b.release()] == ["r1"]
        assert not b.hold(error_row(3, "HTTP 404"))
        for _ in range(TRIP_AFTER * 2):
            b.failure(job_level("HTTP 404", "HTTP 404"))  # never trips once proven
        assert b.verdict() is None


def test_the_verdict_at_the_end_needs_every_answer_job_level() -> None:
    b = CircuitBreaker("u", clock=Clock())
    b.failure(job_level("HTTP 404: nope", "HTTP 404"))
    b.hold(error_row(1, "HTTP 404"))
    verdict = b.verdict()
    assert verdict is not None
    assert "HTTP 404: nope" in verdict.message
    mixed = CircuitBreaker("u", clock=Clock())
    mixed.failure(job_level("HTTP 404", "HTTP 404"))
    mixed.failure(TransientError("HTTP 503"))
    mixed.hold(error_row(1, "HTTP 404"))
    assert mixed.verdict() is None


# -- whole runs ------------------------------------------------------------------------


def assert_stopped_with_rows_pending(result: Result, out: Path) -> str:
    assert result.exit_code == 3, result.output
    assert results(out) == []  # no row was marked failed: all stay pending
    (line,) = [x for x in result.output.splitlines() if x.startswith("caption:")]
    assert "every request failed the same way and none succeeded" in line
    assert "rows pending" in line
    return line


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (json_error(404, "Not Found: /v2/iu/chat/completionz"), "HTTP 404 api_error: Not Found"),
        (
            json_error(400, "The model `gpt-4q` does not exist", "model_not_found"),
            "HTTP 400 model_not_found: The model `gpt-4q` does not exist",
        ),
        (
            json_error(404, "The model `gpt-4q` does not exist", "model_not_found"),
            "HTTP 404 model_not_found",
        ),
        (  # LiteLLM's proxy: a 400 that names the model, the code a bare number
            json_error(
                400,
                "litellm.BadRequestError: Invalid model name passed in model=gpt:gpt-4o. "
                "Call `/v1/models` to view available models for your key.",
                "400",
            ),
            "Invalid model name passed in model=gpt:gpt-4o",
        ),
        (  # llama-stack: FastAPI's {"detail": ...}, the model named
            Reply(status=400, body={"detail": "Model 'gpt-4o' not found"}),
            "Model 'gpt-4o' not found",
        ),
        (  # OpenAI's own shape for a bad parameter: param says it is the model
            Reply(
                status=400,
                body={"error": {"message": "unsupported", "type": "x", "param": "model"}},
            ),
            "HTTP 400 x: unsupported",
        ),
    ],
)
def test_a_wrong_path_or_model_stops_the_job_early(
    tmp_path: Path, server: ScriptedServer, key: str, reply: Reply, says: str
) -> None:
    src = distinct_images(tmp_path / "imgs", 200)
    server.default = reply
    out = tmp_path / "out"
    result = run(str(src), "-o", str(out), "--endpoint", server.url, "--concurrency", "16")
    line = assert_stopped_with_rows_pending(result, out)
    assert says in line
    assert server.url in line  # the whole URL
    assert server.count() < TRIP_AFTER + 16  # not 200 requests


@pytest.mark.timeout(60)
def test_a_dead_endpoint_stops_the_job_in_seconds(tmp_path: Path, key: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    src = distinct_images(tmp_path / "imgs", 100)
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{port}/chat/completions"
    started = time.monotonic()
    result = run(str(src), "-o", str(out), "--endpoint", url, "--concurrency", "16")
    line = assert_stopped_with_rows_pending(result, out)
    assert "connection refused" in line
    assert url in line
    assert time.monotonic() - started < 30
    assert "MB sent" not in result.output  # nothing left: no connection was ever made


@pytest.mark.timeout(60)
def test_tls_to_a_plain_http_server_stops_the_job(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    src = distinct_images(tmp_path / "imgs", 40)
    out = tmp_path / "out"
    url = server.url.replace("http://", "https://")
    result = run(str(src), "-o", str(out), "--endpoint", url, "--concurrency", "4")
    line = assert_stopped_with_rows_pending(result, out)
    assert "TLS failure" in line


def test_few_rows_all_failing_the_same_way_stop_too(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    src = distinct_images(tmp_path / "imgs", 3)
    server.default = json_error(404, "no such path")
    out = tmp_path / "out"
    assert_stopped_with_rows_pending(run(str(src), "-o", str(out), "--endpoint", server.url), out)
    assert server.count() == 3


def test_a_folder_of_bad_images_ends_as_error_rows_not_a_stop(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """Every request refused the same way, but about the image, not the model: the
    server judged each row, so each is an error row and the run ends (exit 1)."""
    src = distinct_images(tmp_path / "imgs", 30)
    server.default = json_error(400, "Invalid image: could not decode the image data")
    out = tmp_path / "out"
    result = run(str(src), "-o", str(out), "--endpoint", server.url, "--concurrency", "4")
    assert result.exit_code == 1, result.output
    rows = results(out)
    assert len(rows) == 30
    assert {r["error_kind"] for r in rows} == {"rejected"}
    assert server.count() == 30


def test_poison_rows_among_successes_are_row_errors(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    src = distinct_images(tmp_path / "imgs", 40)
    poison = sorted(src.iterdir())[::4]  # 10 of 40, the first row among them
    for path in poison:
        server.plan(digest_of_file(path), json_error(404, "image not found"))
    out = tmp_path / "out"
    result = run(str(src), "-o", str(out), "--endpoint", server.url, "--concurrency", "8")
    assert result.exit_code == 1, result.output
    rows = by_name(results(out))
    assert len(rows) == 40
    errors = sorted(name for name, r in rows.items() if r["status"] == "error")
    assert errors == sorted(p.name for p in poison)
    assert server.count() == 40


def test_held_rows_are_written_when_the_verdict_finds_the_job_not_wrong() -> None:
    b = CircuitBreaker("u", clock=Clock())
    b.failure(job_level("HTTP 404", "HTTP 404"))
    b.hold(error_row(1, "HTTP 404"))
    b.failure(TransientError("HTTP 503"))  # not the same failure every time
    assert b.release() == []  # no proof yet
    assert b.verdict() is None
    assert [r.id for r in b.release(final=True)] == ["r1"]


@pytest.mark.parametrize(("here", "there"), [("/iu/", "/ilm/"), ("/ilm/", "/iu/")])
def test_a_404_on_memories_ai_names_the_other_spelling_of_the_path(here: str, there: str) -> None:
    url = f"https://mavi-backend.memories.ai/serve/api/v2{here}chat/completions"
    b = CircuitBreaker(url, clock=Clock())
    missing = RequestRejected("HTTP 404: not found", http_status=404)
    missing.job_level = "HTTP 404"
    for _ in range(TRIP_AFTER - 1):
        b.failure(missing)
    with pytest.raises(FatalApiError) as info:
        b.failure(missing)
    assert f"both {here} and {there}" in info.value.message
    assert url.replace(here, there) in info.value.message
    other = CircuitBreaker("http://127.0.0.1:9/v1/chat/completions", clock=Clock())
    for _ in range(TRIP_AFTER - 1):
        other.failure(missing)
    with pytest.raises(FatalApiError) as info:
        other.failure(missing)
    assert "spell this path" not in info.value.message
