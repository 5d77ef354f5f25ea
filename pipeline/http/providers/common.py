"""What the gemini:, qwen: and nova: families share: the chat messages around a family's
own image part, caption's explicit sampling values, and their answers read as OpenAI's.

Their servers' defaults differ (temperature 0.7 on gemini and qwen, 1.0 on nova; top_p
0.9 on qwen): a setting left unset is sent as OpenAI's default (temperature 1, top_p 1),
so a job means the same on every family.
"""

from __future__ import annotations

from typing import Any

from pipeline.config.settings import RequestConfig

OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}


def chat_messages(req: RequestConfig, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.system_prompt:
        messages.append({"role": "system", "content": req.system_prompt})
    messages.append({"role": "user", "content": parts})
    return messages


def sampling(req: RequestConfig) -> dict[str, Any]:
    """The body's sampling fields, every one that differs by family sent explicitly."""
    body: dict[str, Any] = {
        "max_tokens": req.max_tokens,
        "n": req.n,
        "stream": False,  # no family but gpt documents a stream format (settings refuse it)
    }
    for name, default in OPENAI_DEFAULTS.items():
        value = getattr(req, name)
        body[name] = default if value is None else value
    for name in ("frequency_penalty", "presence_penalty", "stop"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    return body


def with_metadata(body: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """memories.ai takes a family's own parameters in `extra_body.metadata`."""
    if metadata:
        body["extra_body"] = {"metadata": metadata}
    return body


def as_chat_completion(body: Any) -> Any:
    """A family's answer in OpenAI's `chat.completion` shape, for `parse_completion`.

    gemini and qwen answer `{"object": "completion", "choices": [{"text", "index"}],
    "usage": {"input_tokens", "output_tokens"}, "created_at"}`; nova a `chat.completion`
    whose usage says `output_token`. An answer already in OpenAI's shape passes unchanged,
    as does anything unrecognised (its checks say what is wrong with it).
    """
    if not isinstance(body, dict):
        return body
    if "choices" not in body and isinstance(body.get("data"), dict):
        return {**body, "data": as_chat_completion(body["data"])}  # a success envelope
    out = dict(body)
    choices = body.get("choices")
    if (
        isinstance(choices, list)
        and choices
        and all(isinstance(c, dict) and "message" not in c and "text" in c for c in choices)
    ):
        out["choices"] = [
            {
                "index": c.get("index", i),
                "message": {"role": "assistant", "content": c["text"]},
                "finish_reason": c.get("finish_reason"),
            }
            for i, c in enumerate(choices)
        ]
    if "created" not in out and "created_at" in out:
        out["created"] = out["created_at"]
    usage = body.get("usage")
    if isinstance(usage, dict) and "completion_tokens" not in usage:
        out["usage"] = _openai_usage(usage)
    return out


def _openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    out = dict(usage)
    if "prompt_tokens" not in out and "input_tokens" in out:
        out["prompt_tokens"] = out["input_tokens"]
    for alias in ("output_tokens", "output_token"):
        if alias in out:
            out["completion_tokens"] = out[alias]
            break
    return out
