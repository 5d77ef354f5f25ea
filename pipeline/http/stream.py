"""A streamed answer: server-sent `chat.completion.chunk` events -> one completion body,
which `answer.parse_completion` then reads like any other answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pipeline.errors import TransientError
from pipeline.http.answer import (
    Redacts,
    as_count,
    as_text,
    envelope_error,
    error_fields,
    loads,
    unusable,
)


async def assemble_stream(lines: AsyncIterator[bytes], endpoint: Redacts) -> dict[str, Any]:
    """Assemble server-sent `chat.completion.chunk` events into one completion body."""
    content: dict[int, list[str]] = {}
    refusal: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    meta: dict[str, Any] = {}
    done = False
    async for raw_line in lines:
        line = raw_line.strip()
        if not line or not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        try:
            chunk = loads(data)
        except ValueError:
            raise TransientError("stream sent an event that is not JSON", http_status=200) from None
        if not isinstance(chunk, dict):
            continue
        if (enveloped := envelope_error(chunk, 200, endpoint)) is not None:
            raise enveloped  # memories.ai's envelope as an event: its code decides, as outside
        if "error" in chunk or chunk.get("status") == "errored":
            code, message = error_fields(chunk)
            raise TransientError(
                endpoint.redact(f"stream errored: {code or ''} {message or ''}".strip()),
                http_status=200,
            )
        for key in ("id", "model", "created", "service_tier", "system_fingerprint"):
            if chunk.get(key) is not None:
                meta[key] = chunk[key]
        if chunk.get("usage"):
            meta["usage"] = chunk["usage"]
        choices = chunk.get("choices")
        for ch in choices if isinstance(choices, list) else []:
            if not isinstance(ch, dict):
                continue
            index = as_count(ch.get("index"), 2**31)
            delta = ch.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            content.setdefault(index, [])
            if text := as_text(delta.get("content")):
                content[index].append(text)
            if text := as_text(delta.get("refusal")):
                refusal.setdefault(index, []).append(text)
            if ch.get("finish_reason"):
                finish[index] = as_text(ch["finish_reason"])
    # Some servers (llama-stack) end without `[DONE]`; a stream whose every choice said
    # why it finished is complete all the same.
    if not done and not (content and all(finish.get(i) for i in content)):
        raise unusable("stream ended before [DONE]", 200, meta.get("usage"))
    choices = [
        {
            "index": i,
            "message": {
                "role": "assistant",
                # No text at all (a refusal, a tool call) is null, as a whole answer says it.
                "content": "".join(content[i]) if content[i] else None,
                "refusal": "".join(refusal[i]) if i in refusal else None,
            },
            "finish_reason": finish.get(i),
        }
        for i in sorted(content)
    ]
    return {**meta, "choices": choices}
