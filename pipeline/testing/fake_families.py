"""The fake endpoint's knowledge of memories.ai's four model families: where each puts its
image and its structured-output request, and the shape of each one's answer, as its page
documents them (`http/providers/` is the client's side of the same). An image part in
another family's shape is refused with a 400, as a strict server would, so the tests
prove the shapes rather than assume them."""

from __future__ import annotations

import json
import re
from typing import Any

from pipeline.config.prices import family_of

_SHAPES = {
    "gpt": '{"type": "image_url", "image_url": {"url": ...}}',
    "gemini": '{"type": "input_file", "file_uri": ..., "mime_type": ...}',
    "qwen": '{"image": ...}',
    "nova": '{"type": "image_url", "image_url": "<URL or base64>"}',
}
_NOVA_SCHEMA = re.compile(r"It must match this JSON Schema: (\{.*\})\s*$", re.S)


class BadRequest(Exception):
    pass


def family(model: str) -> str:
    return family_of(model) or "gpt"


def _image(fam: str, part: dict[str, Any]) -> dict[str, Any] | None:
    """The image of one content part as {url, detail, mime}; None for a text part."""
    kind = part.get("type")
    if fam == "gpt" and kind == "image_url" and isinstance(part.get("image_url"), dict):
        given = part["image_url"]
        return {"url": str(given.get("url", "")), "detail": given.get("detail")}
    if fam == "gemini" and kind == "input_file" and isinstance(part.get("file_uri"), str):
        if not isinstance(part.get("mime_type"), str):
            raise BadRequest("an input_file part needs its mime_type")
        return {"url": part["file_uri"], "mime": part["mime_type"]}
    if fam == "qwen" and set(part) == {"image"} and isinstance(part["image"], str):
        return {"url": part["image"]}
    if fam == "nova" and kind == "image_url" and isinstance(part.get("image_url"), str):
        return {"url": part["image_url"]}
    if (kind == "text" and fam != "qwen") or (fam == "qwen" and set(part) == {"text"}):
        return None
    raise BadRequest(
        f"content part {json.dumps(part)[:120]} is not in the {fam}: family's shape; an "
        f"image there is {_SHAPES[fam]}"
    )


def message_parts(fam: str, body: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(the texts the model reads, roles included; the images) of a request body."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise BadRequest("each message needs a role")
        texts.append(m["role"])
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise BadRequest("each content part must be an object")
                image = _image(fam, part)
                if image is None:
                    texts.append(str(part.get("text", "")))
                else:
                    images.append(image)
        else:
            raise BadRequest("message content must be a string or an array")
    return texts, images


def requested_format(fam: str, body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """What the request asks the answer to be, as OpenAI's `response_format` would say it."""
    metadata = (body.get("extra_body") or {}).get("metadata") or {}
    if fam == "gemini":
        if metadata.get("response_mime_type") != "application/json":
            return {}
        schema = metadata.get("responseSchema")
        if schema is None:
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"schema": from_gemini(schema)}}
    if fam == "qwen":
        return dict(metadata.get("response_format") or {})
    if fam == "nova":  # no JSON mode: the fake follows the prompt's instruction
        found = _NOVA_SCHEMA.search(texts[-1] if texts else "")
        if found:
            return {"type": "json_schema", "json_schema": {"schema": json.loads(found[1])}}
        return {"type": "json_object"} if "JSON object only" in " ".join(texts) else {}
    return dict(body.get("response_format") or {})


def from_gemini(schema: Any) -> Any:
    """Gemini's schema dialect back to JSON Schema (what the fake makes answers from)."""
    if isinstance(schema, list):
        return [from_gemini(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: from_gemini(v) for k, v in schema.items() if k not in ("propertyOrdering", "nullable")
    }
    if isinstance(schema.get("type"), str):
        out["type"] = schema["type"].lower()
        if schema.get("nullable"):
            out["type"] = [out["type"], "null"]
    return out


def shaped(fam: str, answer: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped answer in the family's own documented shape."""
    usage = answer["usage"]
    if fam == "nova":
        return {
            **{k: answer[k] for k in ("id", "object", "created", "model")},
            "choices": [
                {k: c[k] for k in ("index", "message", "finish_reason")} for c in answer["choices"]
            ],
            "usage": {
                "prompt_tokens": usage["prompt_tokens"],
                "output_token": usage["completion_tokens"],
                "total_tokens": usage["total_tokens"],
            },
        }
    if fam not in ("gemini", "qwen"):
        return answer
    out = {
        "id": answer["id"],
        "object": "completion",
        "model": answer["model"],
        "created_at": answer["created"],
        "status": "completed",
        "choices": [
            {"text": c["message"]["content"], "index": c["index"]} for c in answer["choices"]
        ],
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
        },
    }
    if fam == "gemini":
        out["meta"] = {"provider": "gemini", "provider_model": answer["model"]}
    return out
