"""memories.ai's `nova:` family (api-reference/nova/nova-ilm): an `image_url` part whose
value is the URL (or base64) itself, a `chat.completion` answer whose usage says
`output_token`.

Nova documents no JSON mode, only tools (`extra_body.metadata.toolConfig`), and not what
an answer that calls a tool looks like. So a structured job asks for JSON in the prompt,
with the schema, and the answer is checked against the schema and parsed exactly as for
every other family: an answer that does not fit is an `invalid_output` row.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.config.settings import RequestConfig
from pipeline.http.answer import Redacts, parse_completion
from pipeline.http.providers.common import as_chat_completion, chat_messages, sampling
from pipeline.records import Completion

JSON_ONLY = "Answer with one JSON object only: no prose, no code fences."


def json_instruction(req: RequestConfig) -> str | None:
    """The words that ask for the job's JSON, or None for a plain caption."""
    if req.response_format == "json_schema" and req.json_schema is not None:
        schema = json.dumps(req.json_schema.get("schema"), separators=(",", ":"))
        return f"{JSON_ONLY} It must match this JSON Schema: {schema}"
    if req.response_format == "json_object":
        return JSON_ONLY
    return None


class NovaShapes:
    family = "nova"

    def payload(self, req: RequestConfig, image_url: str, mime_type: str) -> dict[str, Any]:
        instruction = json_instruction(req)
        prompt = req.prompt if instruction is None else f"{req.prompt}\n\n{instruction}"
        parts = [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": image_url},
        ]
        return {"model": req.model, "messages": chat_messages(req, parts), **sampling(req)}

    def completion(self, body: Any, status: int, endpoint: Redacts) -> Completion:
        return parse_completion(as_chat_completion(body), status, endpoint)
