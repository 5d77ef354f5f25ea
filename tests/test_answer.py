from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from pipeline.errors import (
    ApiError,
    FatalApiError,
    RateLimited,
    RequestRejected,
    TransientError,
)
from pipeline.http.answer import classify, parse_completion
from pipeline.http.client import Endpoint
from pipeline.http.stream import assemble_stream
from pipeline.http.waits import parse_duration, parse_retry_after

EP = Endpoint.create("http://127.0.0.1:1/chat/completions", "sk-secret", "raw", 10)


def err(status: int, body: object, **headers: str):  # type: ignore[no-untyped-def]
    return classify(status, json.dumps(body).encode(), headers, EP)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, RequestRejected),
        (404, RequestRejected),
        (413, RequestRejected),
        (415, RequestRejected),
        (422, RequestRejected),
        (401, FatalApiError),
        (402, FatalApiError),
        (403, FatalApiError),
        (405, FatalApiError),
        (408, TransientError),
        (409, TransientError),
        (429, RateLimited),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (504, TransientError),
    ],
)
def test_status_classes(status: int, kind: type) -> None:
    exc = err(status, {"error": {"message": "m"}})
    assert type(exc) is kind
    assert exc.http_status == status


def test_insufficient_quota_is_fatal_not_a_rate_limit() -> None:
    exc = err(
        429,
        {"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}},
    )
    assert isinstance(exc, FatalApiError)


def test_both_error_envelopes() -> None:
    assert err(400, {"error": {"message": "bad", "code": "invalid_value"}}).message == (
        "HTTP 400 invalid_value: bad"
    )
    assert err(402, {"code": 402, "msg": "Insufficient balance", "data": None}).message == (
        "HTTP 402 code 402: Insufficient balance"
    )
    # LiteLLM-style: a bare number in `code`, the telling word in `type`.
    litellm = {"error": {"message": "bad", "type": "invalid_request_error", "code": "400"}}
    assert err(400, litellm).message == "HTTP 400 invalid_request_error: bad"
    assert (
        classify(502, b"<html>Bad Gateway</html>", {}, EP).message
        == "HTTP 502: <html>Bad Gateway</html>"
    )


ENVELOPE = {"msg": "m", "data": None, "success": False, "failed": True}


@pytest.mark.parametrize(
    ("code", "kind", "meaning"),
    [
        ("0402", FatalApiError, "not enough credits"),
        ("0401", FatalApiError, "the API key is invalid or expired"),
        ("0403", FatalApiError, "the account is disabled"),
        ("9009", FatalApiError, "permission denied"),
        ("0429", RateLimited, "too busy: rate limited"),
        ("0001", RequestRejected, "bad parameters"),
        ("0003", RequestRejected, "bad parameters"),
        ("0409", TransientError, None),
        ("1234", TransientError, None),
        (402, FatalApiError, None),
        ("402", FatalApiError, None),
        (429, RateLimited, None),
        (400, RequestRejected, None),
        (500, TransientError, None),
    ],
)
@pytest.mark.parametrize("status", [200, 400, 500])
def test_memories_envelope_codes_decide_whatever_the_status(
    code: str | int, kind: type, meaning: str | None, status: int
) -> None:
    body = {**ENVELOPE, "code": code}
    exc = err(status, body) if status != 200 else None
    if exc is None:
        with pytest.raises(ApiError) as info:
            parse_completion(body, 200, EP)
        exc = info.value
    assert type(exc) is kind
    assert exc.message.startswith(f"HTTP {status} code {code}: m")
    if meaning:
        assert f"({meaning})" in exc.message


def test_a_success_envelope_is_not_an_error() -> None:
    completion = {"choices": [{"index": 0, "message": {"content": "hi"}}], "usage": {}}
    wrapped = {"code": "0000", "msg": "ok", "data": completion, "success": True}
    assert parse_completion(wrapped, 200, EP).choices[0].content == "hi"
    assert parse_completion({**completion, "code": 0}, 200, EP).choices[0].content == "hi"


def test_x_should_retry_overrides() -> None:
    assert type(err(400, {}, **{"x-should-retry": "true"})) is TransientError
    assert type(err(503, {}, **{"x-should-retry": "false"})) is RequestRejected


def test_error_text_is_redacted() -> None:
    assert "sk-secret" not in err(400, {"error": {"message": "key sk-secret is bad"}}).message


def test_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "7"}) == 0.25
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    date = format_datetime(datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == 30.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None
    # No advice at all, so the caller backs off as usual: never "retry at once", never
    # "wait forever", never a NaN that slips past every cap.
    for odd in ("0", "-3", "nan", "inf", "-inf"):
        assert parse_retry_after({"Retry-After": odd}) is None, odd
        assert parse_retry_after({"retry-after-ms": odd}) is None, odd
    assert parse_retry_after({"Retry-After": "1e9"}) == 1e9  # the caller caps it
    assert err(429, {}, **{"Retry-After": "3"}).retry_after == 3.0


def test_durations() -> None:
    assert parse_duration("1s") == 1.0
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("20ms") == 0.02
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("2.5") == 2.5
    assert parse_duration("later") is None


def test_200_that_is_not_a_completion_is_transient() -> None:
    for body in (
        {"status": "errored", "error": {"message": "x"}},
        {"choices": []},
        [1, 2],
        {"id": "x"},
    ):
        with pytest.raises(TransientError):
            parse_completion(body, 200, EP)
    with pytest.raises(FatalApiError):
        parse_completion({"code": 401, "msg": "invalid key", "data": None}, 200, EP)


def test_completion_fields() -> None:
    body = {
        "id": "c1",
        "created": 5,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp",
        "choices": [
            {"index": 0, "message": {"content": "a", "refusal": None}, "finish_reason": "stop"},
            {"index": 1, "message": {"content": None, "refusal": "no"}, "finish_reason": "stop"},
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "total_tokens": 14,
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }
    c = parse_completion(body, 200, EP)
    assert [ch.content for ch in c.choices] == ["a", None]
    assert c.choices[1].refusal == "no"
    assert (c.usage.prompt_tokens, c.usage.cached_tokens, c.usage.reasoning_tokens) == (10, 3, 2)
    assert (c.response_id, c.model, c.created) == ("c1", "gpt-4o-2024-08-06", 5)


def test_odd_values_are_brought_to_their_column_types() -> None:
    body = {
        "id": 123,
        "created": 2**70,
        "model": None,
        "service_tier": {"tier": "x"},
        "choices": [
            {
                "index": 2**40,
                "message": {"content": [{"type": "text", "text": "two "}, {"text": "parts"}]},
                "finish_reason": ["stop"],
            },
            {"message": "not an object", "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": -5, "completion_tokens": 2**64, "total_tokens": 7.5},
    }
    c = parse_completion(body, 200, EP)
    assert [(ch.index, ch.content, ch.finish_reason) for ch in c.choices] == [
        (0, "two parts", '["stop"]'),
        (1, None, "stop"),
    ]
    assert (c.response_id, c.model, c.created, c.service_tier) == (
        "123",
        None,
        None,
        '{"tier": "x"}',
    )
    # Counts that do not read are no evidence of what was billed: the worker counts.
    assert not c.usage.reported


def test_a_stream_with_odd_deltas_assembles_to_text() -> None:
    events = [
        {"id": "s1", "choices": [{"index": 0, "delta": {"content": "a"}}]},
        {"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "b"}]}}]},
        {"choices": ["not a choice", {"index": 0, "delta": "nope", "finish_reason": 1}]},
        {"choices": None, "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
    ]

    async def lines():  # type: ignore[no-untyped-def]
        for e in events:
            yield b"data: " + json.dumps(e).encode() + b"\n"
        yield b"data: [DONE]\n"

    body = asyncio.run(assemble_stream(lines(), EP))
    c = parse_completion(body, 200, EP)
    assert [(ch.content, ch.finish_reason) for ch in c.choices] == [("ab", "1")]
    assert (c.response_id, c.usage.prompt_tokens) == ("s1", 4)


def stream_of(*events: object, done: bool) -> dict:
    async def lines():  # type: ignore[no-untyped-def]
        for e in events:
            yield b"data: " + json.dumps(e).encode() + b"\n"
        if done:
            yield b"data: [DONE]\n"

    return asyncio.run(assemble_stream(lines(), EP))


def test_a_stream_without_done_is_complete_when_every_choice_finished() -> None:
    first = {"id": "s", "choices": [{"index": 0, "delta": {"content": "a cat"}}]}
    last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    body = stream_of(first, last, done=False)
    assert parse_completion(body, 200, EP).choices[0].content == "a cat"
    with pytest.raises(TransientError, match=r"ended before \[DONE\]"):
        stream_of(first, done=False)  # cut off: no finish_reason, no [DONE]


def test_memories_envelope_inside_a_stream_means_what_it_means_outside() -> None:
    """`data: {"code": "0402", ...}` (no credits) stops the run, as the same envelope in
    a plain answer does, instead of being retried as a transient failure."""
    first = {"id": "s", "choices": [{"index": 0, "delta": {"content": "a"}}]}
    with pytest.raises(FatalApiError, match="0402"):
        stream_of(first, {"code": "0402", "msg": "not enough credits", "data": None}, done=True)
    with pytest.raises(RateLimited, match="0429"):
        stream_of({"code": "0429", "msg": "too busy", "data": None}, done=True)
