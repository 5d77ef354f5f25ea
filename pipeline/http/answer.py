"""What a chat-completions answer means: a usable completion, or a typed error.

Pure functions over what the server sent (status, headers, body, stream events); no I/O.
`http/client.py` does the sending and reading and hands the bytes here. Classification is by
status code and error code, never by matching message text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from pipeline.errors import (
    ApiError,
    FatalApiError,
    RateLimited,
    RequestRejected,
    TransientError,
)
from pipeline.http.waits import parse_retry_after
from pipeline.records import Choice, Completion, Usage

RETRYABLE_STATUSES = frozenset({408, 409, 429})
REJECTED_STATUSES = frozenset({400, 404, 413, 415, 422})
FATAL_STATUSES = frozenset({401, 402, 403})
FATAL_CODES = frozenset({"insufficient_quota"})
# Codes that say the job, not the row, is wrong (the circuit breaker's evidence).
JOB_LEVEL_CODES = frozenset({"model_not_found"})
MAX_ERROR_TEXT = 300


class Redacts(Protocol):
    """Scrubs the key from anything the server echoes back (the endpoint does)."""

    def redact(self, text: str) -> str: ...


def error_fields(body: Any) -> tuple[str | None, str | None]:
    """(code, message) from OpenAI's `{"error": {...}}` or memories.ai's `{"code", "msg"}`.

    Of OpenAI-shaped errors the code is the most telling word: a string `code`, else a
    string `type` (LiteLLM-style proxies put a bare number in `code` and the word in
    `type`), else whatever `code` holds.
    """
    if not isinstance(body, dict):
        return None, None
    err = body.get("error")
    if isinstance(err, dict):
        code, kind = err.get("code"), err.get("type")
        words = [c for c in (code, kind) if isinstance(c, str) and c and not c.isdigit()]
        best = words[0] if words else code if code is not None else kind
        message = err.get("message")
        return (str(best) if best is not None else None), (
            message if isinstance(message, str) else None
        )
    if isinstance(err, str):
        return None, err
    if "msg" in body or "message" in body:
        code = body.get("code")
        return (str(code) if code is not None else None), body.get("msg") or body.get("message")
    return None, None


# memories.ai's older platform envelope: HTTP 200 and a four-digit string code.
ENVELOPE_OK = frozenset({"0", "0000", "200"})
ENVELOPE_FATAL = {
    "0401": "the API key is invalid or expired",
    "0402": "not enough credits",
    "0403": "the account is disabled",
    "9009": "permission denied",
}
ENVELOPE_REJECTED = {"0001": "bad parameters", "0003": "bad parameters"}
ENVELOPE_RATE_LIMITED = {"0429": "too busy: rate limited"}
_ENVELOPE_KEYS = frozenset({"msg", "data", "success", "failed"})


def envelope_error(body: Any, status: int, endpoint: Redacts) -> ApiError | None:
    """The error memories.ai's envelope (`{"code", "msg", "data"}`) carries, whatever the
    HTTP status and whether its code is an integer or a string; None when it says success
    or the body is not such an envelope. A four-digit code is the platform's own (0402
    not enough credits, 0429 rate limited...); a three-digit one is an HTTP status."""
    if not isinstance(body, dict) or "choices" in body or "code" not in body:
        return None
    if not _ENVELOPE_KEYS & body.keys() or isinstance(body.get("error"), dict):
        return None
    code = str(body["code"]).strip()
    if code in ENVELOPE_OK:
        return None
    msg = body.get("msg") or body.get("message")
    meaning = {**ENVELOPE_FATAL, **ENVELOPE_REJECTED, **ENVELOPE_RATE_LIMITED}.get(code)
    detail = f"{msg} ({meaning})" if msg and meaning else msg or meaning or "(no message)"
    text = endpoint.redact(f"HTTP {status} code {code}: {detail}")
    if code in ENVELOPE_FATAL:
        return FatalApiError(text, http_status=status)
    if code in ENVELOPE_RATE_LIMITED:
        return RateLimited(text, http_status=status)
    if code in ENVELOPE_REJECTED:
        return RequestRejected(text, http_status=status)
    if len(code) == 3 and code.isdigit() and 100 <= int(code) <= 599:
        return _by_status(int(code), None, text, None, {})
    return TransientError(text, http_status=status)


def loads(data: bytes) -> Any:
    """Parse an answer: orjson (the fast path), and json for what
    orjson refuses but json reads (an unpaired surrogate escape, NaN), so that a usable
    answer is not thrown away over them. ValueError if it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def classify(
    status: int, raw: bytes, headers: Mapping[str, str], endpoint: Redacts, model: str = ""
) -> ApiError:
    """Turn a non-2xx answer into the error that says what to do about it. `model` is the
    job's: a rejection about it (`param: "model"`, or its name in the message, as LiteLLM
    and llama-stack answer an unknown model with a 400) is wrong for every row."""
    try:
        body = loads(raw)
    except ValueError:
        body = None
    if (enveloped := envelope_error(body, status, endpoint)) is not None:
        return enveloped
    code, message = error_fields(body)
    if message is None:
        message = raw.decode("utf-8", "replace").strip()[:MAX_ERROR_TEXT] or "(empty body)"
    text = endpoint.redact(f"HTTP {status}" + (f" {code}" if code else "") + f": {message}")
    error = _by_status(status, code, text, parse_retry_after(headers), headers)
    if (
        isinstance(error, RequestRejected)
        and error.job_level is None
        and _about_the_model(body, message, model)
    ):
        error.job_level = f"HTTP {status} about the model"
    return error


def _about_the_model(body: Any, message: str, model: str) -> bool:
    """Whether a rejection is about the job's model rather than the row: the error names
    `model` as its parameter, or its message names the model. This matches the job's own
    model name, never a phrase: which words a server uses is its own."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("param") == "model":
        return True
    if not model:
        return False
    names = {model, model.split(":", 1)[-1]}
    return any(len(name) >= 3 and name in message for name in names)


def _by_status(
    status: int,
    code: str | None,
    text: str,
    retry_after: float | None,
    headers: Mapping[str, str],
) -> ApiError:
    should_retry = headers.get("x-should-retry")
    if status == 429 and code in FATAL_CODES:
        return FatalApiError(text, http_status=status)
    if status in FATAL_STATUSES:
        return FatalApiError(text, http_status=status)
    if should_retry == "true":
        return TransientError(text, http_status=status, retry_after=retry_after)
    if should_retry == "false":
        return RequestRejected(text, http_status=status)
    if status == 429:
        return RateLimited(text, http_status=status, retry_after=retry_after)
    if status in RETRYABLE_STATUSES or status >= 500:
        return TransientError(text, http_status=status, retry_after=retry_after)
    if status in REJECTED_STATUSES:
        error = RequestRejected(text, http_status=status)
        # Wrong for every row, if every row gets it: the circuit breaker decides.
        if code in JOB_LEVEL_CODES or status == 404:
            error.job_level = code if code in JOB_LEVEL_CODES else f"HTTP {status}"
        return error
    # 405 and other 4xx: the endpoint itself is wrong for every row, not this one.
    return FatalApiError(text, http_status=status)


# An answer's values go into typed columns. One that does not fit its column would make
# Arrow refuse the whole journal when it is folded, so each is brought to its type here.


def _fitting(value: Any, limit: int = 2**63) -> int | None:
    """A non-negative int that fits its column, or None."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit
    return value if ok else None


def as_count(value: Any, limit: int = 2**63) -> int:
    """A count that fits its column, or 0."""
    return _fitting(value, limit) or 0


def as_text(value: Any) -> str | None:
    """A string column's value. Content given as a list of parts (some OpenAI-compatible
    servers answer that way) is their text joined; anything else odd is kept as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        return "".join(p["text"] for p in value if isinstance(p.get("text"), str))
    return json.dumps(value, ensure_ascii=False)


def parse_usage(raw: Any) -> Usage:
    """The usage block as the server reported it. One that is missing, or whose token
    counts are not non-negative integers (a string, -5, 1e400), is not evidence of what
    was billed: it is `reported=False`, and the worker counts the tokens itself rather
    than recording a free answer."""
    if not isinstance(raw, dict):
        return Usage(reported=False)
    counts = [raw.get("prompt_tokens"), raw.get("completion_tokens")]
    if any(_fitting(v) is None for v in counts) or (
        raw.get("total_tokens") is not None and _fitting(raw.get("total_tokens")) is None
    ):
        return Usage(reported=False)
    prompt_details = raw.get("prompt_tokens_details")
    prompt_details = prompt_details if isinstance(prompt_details, dict) else {}
    completion_details = raw.get("completion_tokens_details")
    completion_details = completion_details if isinstance(completion_details, dict) else {}
    prompt = as_count(raw.get("prompt_tokens"))
    completion = as_count(raw.get("completion_tokens"))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=as_count(raw.get("total_tokens")) or prompt + completion,
        cached_tokens=as_count(prompt_details.get("cached_tokens")),
        reasoning_tokens=as_count(completion_details.get("reasoning_tokens")),
    )


def unusable(message: str, status: int, usage: Any) -> TransientError:
    """An answer that cannot be used, with the usage it reported: it was billed."""
    error = TransientError(message, http_status=status)
    if isinstance(usage, dict):
        error.usage = parse_usage(usage)
    return error


def parse_completion(body: Any, status: int, endpoint: Redacts) -> Completion:
    """A 200 is not proof of success: memories.ai can answer 200 with `status: errored`."""
    if not isinstance(body, dict):
        raise TransientError(
            f"HTTP {status} with a body that is not a JSON object", http_status=status
        )
    if body.get("status") == "errored" or "error" in body:
        code, message = error_fields(body)
        raise TransientError(
            endpoint.redact(f"HTTP {status} errored: {code or ''} {message or ''}".strip()),
            http_status=status,
        )
    if (enveloped := envelope_error(body, status, endpoint)) is not None:
        raise enveloped  # memories.ai's envelope inside a 200: its own code decides
    if "choices" not in body and isinstance(body.get("data"), dict):
        body = body["data"]  # a success envelope around the completion
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise unusable(f"HTTP {status} without choices", status, body.get("usage"))
    text = _scrubbing(endpoint)
    parsed = []
    for i, ch in enumerate(choices):
        if not isinstance(ch, dict):
            raise unusable(f"HTTP {status} with a malformed choice", status, body.get("usage"))
        given = ch.get("message")
        said: dict[str, Any] = given if isinstance(given, dict) else {}
        index = _fitting(ch.get("index"), 2**31)
        parsed.append(
            Choice(
                index=i if index is None else index,
                content=text(said.get("content")),
                refusal=text(said.get("refusal")),
                finish_reason=text(ch.get("finish_reason")),
            )
        )
    return Completion(
        choices=tuple(parsed),
        usage=parse_usage(body.get("usage")),
        response_id=text(body.get("id")),
        model=text(body.get("model")),
        created=_fitting(body.get("created")),
        service_tier=text(body.get("service_tier")),
        system_fingerprint=text(body.get("system_fingerprint")),
    )


def _scrubbing(endpoint: Redacts) -> Callable[[Any], str | None]:
    """`as_text`, with the key taken out: a server that echoes it back in an answer must
    not get it stored in the shards (the caption, the parsed labels, any column)."""

    def text(value: Any) -> str | None:
        value = as_text(value)
        return endpoint.redact(value) if value else value

    return text
