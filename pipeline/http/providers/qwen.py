"""memories.ai's `qwen:` family (api-reference/qwen/qwen-ilm): an image is an `{"image"}`
part beside a `{"text"}` part, structured output (OpenAI's `json_schema` object, without
`strict`) and thinking go in `extra_body.metadata`, the answer is a `completion` object
like gemini's."""

from __future__ import annotations

from typing import Any

from pipeline.config.settings import RequestConfig
from pipeline.http.answer import Redacts, parse_completion
from pipeline.http.providers.common import (
    as_chat_completion,
    chat_messages,
    sampling,
    with_metadata,
)
from pipeline.records import Completion


class QwenShapes:
    family = "qwen"

    def payload(self, req: RequestConfig, image_url: str, mime_type: str) -> dict[str, Any]:
        parts = [{"text": req.prompt}, {"image": image_url}]
        body = {"model": req.model, "messages": chat_messages(req, parts), **sampling(req)}
        metadata: dict[str, Any] = {}
        if req.response_format == "json_schema" and req.json_schema is not None:
            schema = req.json_schema
            metadata["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema.get("name", "labels"), "schema": schema["schema"]},
            }
        elif req.response_format == "json_object":
            metadata["response_format"] = {"type": "json_object"}
        if req.thinking_budget is not None:
            metadata["enable_thinking"] = req.thinking_budget > 0
            if req.thinking_budget > 0:
                metadata["thinking_budget"] = req.thinking_budget
        return with_metadata(body, metadata)

    def completion(self, body: Any, status: int, endpoint: Redacts) -> Completion:
        return parse_completion(as_chat_completion(body), status, endpoint)
