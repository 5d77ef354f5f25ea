from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.prices import PatchRule, TileRule, load_price_table
from pipeline.cost.tokens import (
    O200K_SHA256,
    image_tokens,
    image_tokens_array,
    max_image_tokens,
    o200k,
    patch_counts,
    prompt_text_tokens,
    text_tokens,
    tile_counts,
)

GPT_4O = TileRule(base=85, per_tile=170)


def test_documented_worked_examples() -> None:
    assert image_tokens(GPT_4O, 1024, 1024, "high") == 765
    assert image_tokens(GPT_4O, 2048, 4096, "high") == 1105
    assert image_tokens(GPT_4O, 2048, 4096) == 1105  # auto behaves as high
    for size in ((1, 1), (4096, 8192), (512, 512), (10_000, 20)):
        assert image_tokens(GPT_4O, *size, "low") == 85
    assert patch_counts(np.array([1800]), np.array([2400]), 1536)[0] == 1452


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        # tile families: base + per_tile * tiles
        ("gpt-4o", (1024, 1024), 85 + 170 * 4),
        ("gpt-4.1", (512, 512), 85 + 170 * 1),
        ("gpt-4-turbo", (2048, 4096), 85 + 170 * 6),
        ("gpt-4o-mini", (1024, 1024), 2833 + 5667 * 4),
        ("o1", (1024, 1024), 75 + 150 * 4),
        ("o3", (800, 600), 75 + 150 * 4),  # 800x600 stays; 2 x 2 tiles
        ("gpt-5", (1024, 1024), 70 + 140 * 4),
        ("gpt-5.1-chat-latest", (300, 200), 70 + 140 * 1),
        # patch families: ceil(patches * multiplier), patches capped by the budget
        ("gpt-4.1-mini", (1800, 2400), math.ceil(Fraction(1452) * Fraction("1.62"))),
        ("gpt-4.1-nano", (1800, 2400), math.ceil(Fraction(1452) * Fraction("2.46"))),
        ("o4-mini", (1800, 2400), math.ceil(Fraction(1452) * Fraction("1.72"))),
        ("gpt-5-mini", (1800, 2400), math.ceil(Fraction(1452) * Fraction("1.2"))),
        ("gpt-5-nano", (1800, 2400), math.ceil(Fraction(1452) * Fraction("1.5"))),
        ("gpt-5.2", (64, 64), math.ceil(4 * Fraction("1.2"))),  # 2 x 2 patches, under budget
        ("gpt-4.1-mini", (320, 320), 162),  # 100 patches * 1.62 is exactly 162, not 163
    ],
)
def test_one_case_per_model_family(model: str, size: tuple[int, int], expected: int) -> None:
    rule = load_price_table()[model].image
    assert rule is not None
    assert image_tokens(rule, *size) == expected


def _reference_tiles(w: int, h: int) -> int:
    """The rule as written, in exact fractions."""
    fw, fh = Fraction(w), Fraction(h)
    if max(fw, fh) > 2048:
        s = Fraction(2048) / max(fw, fh)
        fw, fh = fw * s, fh * s
    if min(fw, fh) > 768:
        s = Fraction(768) / min(fw, fh)
        fw, fh = fw * s, fh * s
    return math.ceil(fw / 512) * math.ceil(fh / 512)


def _reference_patches(w: int, h: int, budget: int) -> int:
    patches = math.ceil(w / 32) * math.ceil(h / 32)
    if patches <= budget:
        return patches
    r = math.sqrt(32 * 32 * budget / (w * h))
    r *= min(math.floor(w * r / 32) / (w * r / 32), math.floor(h * r / 32) / (h * r / 32))
    return min(math.ceil(int(w * r) / 32) * math.ceil(int(h * r) / 32), budget)


def test_vectorised_rules_match_the_rules_as_written() -> None:
    rng = np.random.default_rng(7)
    w = rng.integers(1, 12_000, 5_000)
    h = rng.integers(1, 12_000, 5_000)
    # Sizes on tile and scale boundaries, where float rounding would go wrong.
    edges = np.array([512, 513, 768, 769, 1024, 1536, 2048, 2049, 4096, 6144])
    w = np.concatenate([w, np.repeat(edges, len(edges))])
    h = np.concatenate([h, np.tile(edges, len(edges))])
    tiles = tile_counts(w, h)
    patches = patch_counts(w, h, 1536)
    for i in range(len(w)):
        assert tiles[i] == _reference_tiles(int(w[i]), int(h[i])), (w[i], h[i])
        assert patches[i] == _reference_patches(int(w[i]), int(h[i]), 1536), (w[i], h[i])


def test_worst_case_bounds_every_size() -> None:
    rng = np.random.default_rng(3)
    w, h = rng.integers(1, 20_000, 2_000), rng.integers(1, 20_000, 2_000)
    for rule in (GPT_4O, PatchRule(multiplier=1.62), PatchRule(multiplier=1.2, budget=6144)):
        assert image_tokens_array(rule, w, h).max() <= max_image_tokens(rule)
    assert max_image_tokens(GPT_4O) == 85 + 170 * 8
    assert max_image_tokens(GPT_4O, "low") == 85
    assert max_image_tokens(PatchRule(multiplier=1.62)) == math.ceil(1536 * Fraction("1.62"))


def test_text_counts_match_known_o200k_encodings() -> None:
    enc = o200k()
    assert enc.encode("hello world") == [24912, 2375]
    assert enc.encode("Hello, world!") == [13225, 11, 2375, 0]
    assert enc.encode("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    assert text_tokens("hello world") == 2


def test_prompt_framing_counted_once_per_message() -> None:
    # user message: 3 framing + "user" (1) + prompt; reply priming 3.
    assert prompt_text_tokens("", "hello world") == 3 + 1 + 2 + 3
    # a system message adds 3 framing + "system" (1) + its text.
    assert prompt_text_tokens("Hello, world!", "hello world") == 9 + 3 + 1 + 4


def test_bad_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        image_tokens(GPT_4O, 0, 10)


def test_o200k_is_counted_offline_from_the_copy_shipped_in_the_package(tmp_path: Path) -> None:
    """A fresh process with an empty cache: the shipped file is staged where tiktoken
    looks first (no network here: a download would fail), and counts match."""
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env["CAPTION_CACHE_DIR"] = str(tmp_path)
    code = "from pipeline.cost.tokens import text_tokens; print(text_tokens('a red square'))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "3"
    (staged,) = (tmp_path / "tiktoken").iterdir()
    assert hashlib.sha256(staged.read_bytes()).hexdigest() == O200K_SHA256
