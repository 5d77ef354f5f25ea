"""Prompt tokens of text, with `o200k_base`, offline (images: `cost/images.py`).

Pure functions of strings, shared by `estimate`, the run's budget and rate limits, and the
fake endpoint's usage blocks.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.io.storage import cache_root
from pipeline.records import Completion, Usage

if TYPE_CHECKING:
    import tiktoken

# OpenAI cookbook, "How to count tokens with tiktoken": every message costs 3 tokens of
# framing, and every reply is primed with 3 more. An estimate, as the cookbook says.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3


# o200k_base as tiktoken would download it, shipped inside this package (gzipped), so
# that counting works offline.
O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_SHIPPED = Path(__file__).with_name("o200k_base.tiktoken.gz")


@functools.cache
def o200k() -> tiktoken.Encoding:
    """`o200k_base`, offline. tiktoken looks for the file in its cache directory
    (`$TIKTOKEN_CACHE_DIR`, named by the SHA-1 of its URL) before it downloads it: the
    copy shipped here is put there first, checked against the SHA-256 tiktoken expects.
    Without `$TIKTOKEN_CACHE_DIR`, the cache is caption's own (`~/.cache/caption/tiktoken`,
    or under `$CAPTION_CACHE_DIR`)."""
    import tiktoken

    cache = Path(os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache_root() / "tiktoken")))
    cached = cache / hashlib.sha1(O200K_URL.encode()).hexdigest()
    if not cached.exists():
        data = gzip.decompress(O200K_SHIPPED.read_bytes())
        if hashlib.sha256(data).hexdigest() != O200K_SHA256:
            raise RuntimeError(f"{O200K_SHIPPED}: not the o200k_base file tiktoken expects")
        cache.mkdir(parents=True, exist_ok=True)
        staged = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        staged.write_bytes(data)
        os.replace(staged, cached)  # whole or absent, whoever else stages it at once
    return tiktoken.get_encoding("o200k_base")


def text_tokens(text: str) -> int:
    return len(o200k().encode_ordinary(text))


def prompt_text_tokens(
    system_prompt: str, prompt: str, json_schema: dict[str, Any] | None = None
) -> int:
    """Text tokens of one request: messages' framing, roles and text, the reply priming,
    and a structured job's schema (counted as its compact JSON: how the server renders
    it to the model is not published, so this is close, not exact).

    The same for every image of a job, so callers compute it once per distinct prompt.
    """
    tokens = TOKENS_REPLY_PRIMING + schema_tokens(json_schema)
    if system_prompt:
        tokens += TOKENS_PER_MESSAGE + text_tokens("system") + text_tokens(system_prompt)
    tokens += TOKENS_PER_MESSAGE + text_tokens("user") + text_tokens(prompt)
    return tokens


def schema_tokens(json_schema: dict[str, Any] | None) -> int:
    if json_schema is None:
        return 0
    return text_tokens(json.dumps(json_schema, separators=(",", ":"), sort_keys=True))


def estimated_usage(completion: Completion, prompt_tokens: int) -> Usage:
    """Our own count for an answer without usage: the prompt by the estimate's exact rules,
    the completion with o200k over the text of every choice."""
    generated = sum(
        text_tokens(choice.content or "") + text_tokens(choice.refusal or "")
        for choice in completion.choices
    )
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=generated,
        total_tokens=prompt_tokens + generated,
        reported=False,
    )
