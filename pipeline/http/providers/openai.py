"""OpenAI's chat-completions shapes: the `gpt:` family of memories.ai and any
OpenAI-compatible server. A setting left unset is not sent, so the server's default
applies."""

from __future__ import annotations

from typing import Any

from pipeline.config.settings import RequestConfig
from pipeline.http.answer import Redacts, parse_completion
from pipeline.records import Completion

_OPTIONAL = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "stop")


class OpenAIShapes:
    family = "gpt"

    def payload(self, req: RequestConfig, image_url: str, mime_type: str) -> dict[str, Any]:
        return build_payload(req, image_url)

    def completion(self, body: Any, status: int, endpoint: Redacts) -> Completion:
        return parse_completion(body, status, endpoint)


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
    if req.response_format == "json_schema":
        payload["response_format"] = {"type": "json_schema", "json_schema": req.json_schema}
    elif req.response_format is not None:
        payload["response_format"] = {"type": req.response_format}
    if req.stream:
        payload["stream_options"] = {"include_usage": True}
    return payload
