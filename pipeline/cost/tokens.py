"""Prompt tokens: images by the published per-model rules, text with `o200k_base`, offline.

Pure functions of sizes and strings, shared by `estimate`, the run's budget and rate
limits, and the fake endpoint's usage blocks. The rules' numbers come from the price table
(`configs/prices.toml`), not from code.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config.prices import ImageRule, PatchRule, TileRule
from pipeline.io.storage import cache_root
from pipeline.records import Completion, Usage

if TYPE_CHECKING:
    import tiktoken

TILE_FIT = 2048
TILE_SHORT_SIDE = 768
TILE_SIZE = 512
PATCH_SIZE = 32

# OpenAI cookbook, "How to count tokens with tiktoken": every message costs 3 tokens of
# framing, and every reply is primed with 3 more. An estimate, as the cookbook says.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3


def _ceil_div(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    return -(-a // b)


def tile_counts(width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """512-px tiles after fitting into 2048x2048 (never enlarging), then shortest side 768.

    Exact integer arithmetic: a size is scaled by the rational A/B, so ceil(w * A / B / 512)
    is computed as a ceiling division of integers, with no float rounding at tile edges.
    """
    w = width.astype(np.int64)
    h = height.astype(np.int64)
    longest, shortest = np.maximum(w, h), np.minimum(w, h)
    # Step 1: fit into 2048x2048, i.e. scale by A/B = 2048/longest when longest > 2048.
    fit = longest > TILE_FIT
    a = np.where(fit, TILE_FIT, 1)
    b = np.where(fit, longest, 1)
    # Step 2: if the shortest side is still over 768, scale it to 768. Composed with step 1
    # that is a single scale of 768/shortest from the original size.
    shrink = shortest * a > TILE_SHORT_SIDE * b
    a = np.where(shrink, TILE_SHORT_SIDE, a)
    b = np.where(shrink, shortest, b)
    return _ceil_div(w * a, b * TILE_SIZE) * _ceil_div(h * a, b * TILE_SIZE)


def patch_counts(width: np.ndarray, height: np.ndarray, budget: int) -> np.ndarray:
    """32-px patches; over the budget, shrink so whole patches fit, then recount (capped)."""
    patches = np.ceil(width / PATCH_SIZE) * np.ceil(height / PATCH_SIZE)
    resized_w, resized_h = patch_resized(width, height, budget)
    recount = np.ceil(resized_w / PATCH_SIZE) * np.ceil(resized_h / PATCH_SIZE)
    return np.where(patches > budget, np.minimum(recount, budget), patches).astype(np.int64)


def patch_resized(
    width: np.ndarray, height: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """The size a patch model shrinks an image to when its patches exceed `budget` (the
    image's own size otherwise): the scale that fits, then whole patches."""
    w = width.astype(np.float64)
    h = height.astype(np.float64)
    r = np.sqrt(PATCH_SIZE * PATCH_SIZE * budget / (w * h))
    wp, hp = w * r / PATCH_SIZE, h * r / PATCH_SIZE
    r = r * np.minimum(np.floor(wp) / wp, np.floor(hp) / hp)
    over = np.ceil(w / PATCH_SIZE) * np.ceil(h / PATCH_SIZE) > budget
    return (
        np.where(over, np.floor(w * r), w).astype(np.int64),
        np.where(over, np.floor(h * r), h).astype(np.int64),
    )


def billed_size(
    rule: ImageRule, width: int, height: int, detail: str | None = None
) -> tuple[int, int]:
    """The size at which the model sees (and bills) an image: the most an upload needs.
    Never larger than the image. Sending exactly this size bills the same tokens as the
    original (`image_tokens` of both agree; `engine/resize.py` checks it for every image)."""
    if isinstance(rule, TileRule):
        longest, shortest = max(width, height), min(width, height)
        if detail == "low":  # a fixed price: the model sees 512x512 at most
            scale = min(Fraction(1), Fraction(TILE_SIZE, longest))
        else:
            scale = Fraction(1)
            if longest > TILE_FIT:
                scale = Fraction(TILE_FIT, longest)
            if shortest * scale > TILE_SHORT_SIDE:
                scale = Fraction(TILE_SHORT_SIDE, shortest)
        # Up to whole pixels: a tile edge cut short would bill one tile less than the original.
        return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))
    w, h = patch_resized(np.array([width]), np.array([height]), rule.budget)
    return max(1, int(w[0])), max(1, int(h[0]))


def image_tokens_array(
    rule: ImageRule, width: np.ndarray, height: np.ndarray, detail: str | None = None
) -> np.ndarray:
    """Prompt tokens per image for arrays of pixel sizes (all must be positive)."""
    if isinstance(rule, TileRule):
        if detail == "low":
            return np.full(len(width), rule.base, dtype=np.int64)
        return rule.base + rule.per_tile * tile_counts(width, height)
    # ceil(patches * multiplier) as an exact fraction: 100 patches * 1.62 is 162, not 163.
    multiplier = Fraction(str(rule.multiplier))
    patches = patch_counts(width, height, rule.budget)
    return _ceil_div(patches * multiplier.numerator, multiplier.denominator)


def image_tokens(rule: ImageRule, width: int, height: int, detail: str | None = None) -> int:
    """Prompt tokens for one image of `width` x `height` pixels under `rule`."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return int(image_tokens_array(rule, np.array([width]), np.array([height]), detail)[0])


def max_image_tokens(rule: ImageRule, detail: str | None = None) -> int:
    """The most tokens one image of any size can cost: the worst case for unknown sizes."""
    if isinstance(rule, TileRule):
        if detail == "low":
            return rule.base
        most_tiles = math.ceil(TILE_SHORT_SIDE / TILE_SIZE) * math.ceil(TILE_FIT / TILE_SIZE)
        return rule.base + rule.per_tile * most_tiles
    assert isinstance(rule, PatchRule)
    return math.ceil(Fraction(str(rule.multiplier)) * rule.budget)


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
