"""memories.ai's `gemini:` family (api-reference/gemini/gemini-ilm): an image is an
`input_file` part, structured output and thinking go in `extra_body.metadata`, the answer
is a `completion` object with `choices[].text` and `input_tokens`/`output_tokens`."""

from __future__ import annotations

from typing import Any

from pipeline.config.gemini_schema import gemini_schema
from pipeline.config.settings import RequestConfig
from pipeline.http.answer import Redacts, parse_completion
from pipeline.http.providers.common import (
    as_chat_completion,
    chat_messages,
    sampling,
    with_metadata,
)
from pipeline.records import Completion


class GeminiShapes:
    family = "gemini"

    def payload(self, req: RequestConfig, image_url: str, mime_type: str) -> dict[str, Any]:
        parts = [
            {"type": "text", "text": req.prompt},
            {"type": "input_file", "file_uri": image_url, "mime_type": mime_type},
        ]
        body = {"model": req.model, "messages": chat_messages(req, parts), **sampling(req)}
        metadata: dict[str, Any] = {}
        if req.response_format in ("json_object", "json_schema"):
            metadata["response_mime_type"] = "application/json"
        if req.response_format == "json_schema" and req.json_schema is not None:
            metadata["responseSchema"] = gemini_schema(req.json_schema.get("schema"))
        if req.thinking_budget is not None:
            metadata["thinking_config"] = {"thinking_budget": req.thinking_budget}
        return with_metadata(body, metadata)

    def completion(self, body: Any, status: int, endpoint: Redacts) -> Completion:
        return parse_completion(as_chat_completion(body), status, endpoint)
