"""A job's identity: what changes the answer (its definition and fingerprint), and how its
rows are named (its id scheme). An output folder holds one job; a rerun that would mix in
another is refused, saying what differs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.config.labels import strict_fits
from pipeline.config.prices import canonical_model
from pipeline.config.settings import JobConfig
from pipeline.errors import UsageError


def job_definition(config: JobConfig) -> dict[str, Any]:
    """Everything that changes the answer: model, prompts, request parameters, endpoint.

    Never the key (nor the name of its variable): only what the server sees of the job.
    Concurrency, limits and budget change how fast and how much, not what, so they are out.
    """
    req = config.request
    schema: dict[str, Any] = {} if req.json_schema is None else {"json_schema": req.json_schema}
    # A cap in pixels changes what the model sees; "model" does not (the model scales
    # every image to that size itself), so switching it on keeps the job the same.
    if isinstance(req.resize, int):
        schema["resize"] = req.resize
    if req.thinking_budget is not None:
        schema["thinking_budget"] = req.thinking_budget
    if req.inline_images != "data_url":
        schema["inline_images"] = req.inline_images
    return {
        "endpoint": config.endpoint.url,
        "model": canonical_model(req.model),  # gpt-4o and gpt:gpt-4o are one model
        "system_prompt": req.system_prompt,
        "prompt": req.prompt,
        "detail": req.detail,
        "response_format": req.response_format,
        "temperature": req.temperature,
        "max_tokens": req.max_tokens,
        "max_tokens_field": req.max_tokens_field,
        "top_p": req.top_p,
        "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
        "n": req.n,
        "stream": req.stream,
        "stop": req.stop,
        **schema,  # only when set: the fingerprints of folders without one are unchanged
    }


def fingerprint(definition: dict[str, Any]) -> str:
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def changed_settings(old: dict[str, Any], definition: dict[str, Any]) -> list[str]:
    """The settings in which two job definitions differ, by name."""
    return [k for k in sorted(set(old) | set(definition)) if old.get(k) != definition.get(k)]


def refuse_another_job(label: str, previous: dict[str, Any], config: JobConfig) -> None:
    """Refuse to mix answers of a different job into the folder `label`."""
    definition = job_definition(config)
    old = previous.get("job", {})
    if previous.get("fingerprint") == fingerprint(definition) or _same_job(old, definition):
        return
    changed = changed_settings(old, definition)
    described = "; ".join(
        f"{k}: {_short(old.get(k))} -> {_short(definition.get(k))}" for k in changed
    )
    raise UsageError(
        f"{label} holds results of a different job ({described or 'fingerprint differs'}); "
        "use a new output folder, or rerun with the original settings"
    )


def refuse_other_ids(label: str, previous: dict[str, Any] | None, scheme: str) -> None:
    """Refuse a rerun whose ids are made another way than the folder's (`sources/ids.py`):
    every row would get a new id and be paid for again."""
    old = ((previous or {}).get("ids") or {}).get("from")
    if old in (None, "manifest", scheme) or scheme == "manifest":
        return
    flag = f"--id-column {old[7:]}" if old.startswith("column:") else f"--id-from {old}"
    raise UsageError(
        f"{label} holds results whose ids are from {old}, and this run's would be "
        f"from {scheme}: every row would be sent and paid for again; rerun with {flag}, "
        "or use a new output folder"
    )


def _same_job(old: dict[str, Any], definition: dict[str, Any]) -> bool:
    """The same job, recorded by an older version: before model names were made
    canonical (`gpt-4o`), or before a bare schema that OpenAI's strict mode refuses was
    sent without `strict` (it was sent with it, and such requests were refused or the
    flag ignored: the job is the same)."""
    if not isinstance(old.get("model"), str):
        return False
    then = {**old, "model": canonical_model(old["model"])}
    schema = then.get("json_schema")
    now = definition.get("json_schema")
    if (
        isinstance(schema, dict)
        and isinstance(now, dict)
        and schema.get("strict") is True
        and now.get("strict") is False
        and schema.get("schema") == now.get("schema")
        and not strict_fits(schema.get("schema"))
    ):
        then["json_schema"] = {**schema, "strict": False}
    return fingerprint(then) == fingerprint(definition)


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
