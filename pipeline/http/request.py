"""The chat-completions request body for one image, from the job's `[request]` settings.

`run` sends it; `estimate` counts what it would send. A setting left unset is not sent, so
the server's default applies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.config.settings import RequestConfig
from pipeline.errors import UsageError

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
    if req.response_format == "json_schema":
        payload["response_format"] = {"type": "json_schema", "json_schema": req.json_schema}
    elif req.response_format is not None:
        payload["response_format"] = {"type": req.response_format}
    if req.stream:
        payload["stream_options"] = {"include_usage": True}
    return payload


# Stands where the image URL goes while the job's body is serialised once.
_SLOT = "\x00caption:image-url\x00"


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """The job's request body as JSON bytes, serialised once, with a slot for the image.

    Every request differs only in its image URL. A local image's data URL is base64, whose
    alphabet needs no escaping in JSON, so its bytes are spliced in as they are: a photo
    never goes through json.dumps, nor is copied whole for it.
    """

    before: bytes
    after: bytes

    @classmethod
    def for_request(cls, req: RequestConfig) -> BodyTemplate:
        parts = json.dumps(build_payload(req, _SLOT)).split(json.dumps(_SLOT))
        if len(parts) != 2:
            raise UsageError(f"[request] a prompt may not be {_SLOT!r}: it marks the image")
        before, after = parts
        return cls(before=f'{before}"'.encode(), after=f'"{after}'.encode())

    def with_url(self, url: str) -> bytes:
        """The body for an image the endpoint fetches itself."""
        return b"".join((self.before, json.dumps(url)[1:-1].encode(), self.after))

    def with_data(self, mime: str, encoded: bytes) -> bytes:
        """The body for a local image: `encoded` is its base64, sent as a data URL."""
        return b"".join((self.before, b"data:", mime.encode(), b";base64,", encoded, self.after))


def worst_case_completion_tokens(req: RequestConfig) -> int:
    """Every choice may run to max_tokens, and every choice is billed."""
    return req.n * req.max_tokens
