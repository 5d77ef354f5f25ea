"""The chat-completions request body for one image, from the job's `[request]` settings.

`run` sends it; `estimate` counts what it would send. A setting left unset is not sent, so
the server's default applies.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import RequestConfig

_OPTIONAL = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "stop")


def build_payload(req: RequestConfig, image_url: str) -> dict[str, Any]:
    image: dict[str, Any] = {"url": image_url}
    if req.detail is not None:
        image["detail"] = req.detail
    messages: list[dict[str, Any]] = []
    if req.system_prompt:
        messages.append({"role": "system", "content": req.system_prompt})
    messages.append(
        {
            "role": "user",
            # memories.ai wants an array of parts; a bare string has been seen rejected.
            "content": [
                {"type": "text", "text": req.prompt},
                {"type": "image_url", "image_url": image},
            ],
        }
    )
    payload: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        req.max_tokens_field: req.max_tokens,
        "n": req.n,
        "stream": req.stream,
    }
    for name in _OPTIONAL:
        value = getattr(req, name)
        if value is not None:
            payload[name] = value
    if req.response_format is not None:
        payload["response_format"] = {"type": req.response_format}
    if req.stream:
        payload["stream_options"] = {"include_usage": True}
    return payload


def worst_case_completion_tokens(req: RequestConfig) -> int:
    """Every choice may run to max_tokens, and every choice is billed."""
    return req.n * req.max_tokens
