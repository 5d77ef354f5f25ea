"""Image tokens by each model's rule (`cost/images.py`): OpenAI's exact tile and patch
rules against their worked examples and the rules as written; the other families' rules
against their providers' published examples; and for every rule, that the size
`--resize model` sends bills exactly what the original does, and that the worst case
bounds every size."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from pipeline.config.imagerules import (
    AreaRule,
    CropTileRule,
    FixedRule,
    GridRule,
    ImageRule,
    PatchRule,
    TileRule,
)
from pipeline.config.prices import load_price_table
from pipeline.cost.images import (
    billed_size,
    image_tokens,
    image_tokens_array,
    max_image_tokens,
    patch_counts,
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


def test_bad_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        image_tokens(GPT_4O, 0, 10)


GEMINI = CropTileRule()
QWEN3 = GridRule(pixels=32, max_tokens=2560)
QWEN25 = GridRule(pixels=28, max_tokens=1280)
NOVA = AreaRule(
    points=((405000, 800), (810000, 1300), (1260000, 1800), (1620000, 2400), (1690000, 2600)),
    max_pixels=1690000,
)


def test_gemini_counts_small_images_once_and_larger_ones_by_crops() -> None:
    assert image_tokens(GEMINI, 384, 384) == 258  # both sides <= 384: one image's tokens
    assert image_tokens(GEMINI, 100, 300) == 258
    # 1024x768: crops of 768 / 1.5 = 512 px: 2 x 2 crops
    assert image_tokens(GEMINI, 1024, 768) == 4 * 258
    # 3072x384: crops are at least 256 px: 12 x 2
    assert image_tokens(GEMINI, 3072, 384) == 24 * 258
    # over 3072 the image is first scaled to fit: 6000x4500 is seen as 3072x2304
    assert image_tokens(GEMINI, 6000, 4500) == image_tokens(GEMINI, 3072, 2304) == 12 * 258
    assert image_tokens(FixedRule(tokens=1120), 10, 10) == 1120


def test_qwen_follows_model_studios_worked_formula() -> None:
    # tokens = h_bar * w_bar / 32^2 + 2, sides rounded to 32
    assert image_tokens(QWEN3, 1024, 1024) == 1024 + 2
    assert image_tokens(QWEN3, 1000, 500) == 31 * 16 + 2  # round(31.25), round(15.6)
    assert image_tokens(QWEN3, 10, 10) == 4 + 2  # raised to the 4-token floor
    # 4000x3000 is over 2560 cells: scaled down by sqrt(12e6 / 2560 / 1024), then floored
    beta = math.sqrt(4000 * 3000 / (2560 * 32 * 32))
    cells = math.floor(4000 / beta / 32) * math.floor(3000 / beta / 32)
    assert image_tokens(QWEN3, 4000, 3000) == cells + 2
    assert image_tokens(QWEN25, 28 * 10, 28 * 20) == 200 + 2


def test_nova_reads_amazons_table() -> None:
    for pixels, tokens in NOVA.points:
        assert image_tokens(NOVA, pixels, 1) == tokens
    assert image_tokens(NOVA, 900, 900) == 1300
    # between points: linear; 1,000,000 px is 190,000 of the 450,000 from 810,000 to 1.26M
    assert image_tokens(NOVA, 1000, 1000) == math.ceil(1300 + 500 * 190_000 / 450_000)
    assert image_tokens(NOVA, 4000, 3000) == 2600  # scaled down to the largest size


RULES: list[ImageRule] = [
    TileRule(base=85, per_tile=170),
    PatchRule(multiplier=1.2),
    GEMINI,
    FixedRule(tokens=1120),
    QWEN3,
    QWEN25,
    NOVA,
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_the_billed_size_bills_the_same_and_the_worst_case_bounds_all(rule: ImageRule) -> None:
    rng = np.random.default_rng(11)
    w = np.concatenate([rng.integers(1, 9000, 3000), rng.integers(1, 500, 500)])
    h = np.concatenate([rng.integers(1, 9000, 3000), rng.integers(1, 9000, 500)])
    tokens = image_tokens_array(rule, w, h)
    assert tokens.max() <= max_image_tokens(rule)
    for i in range(0, len(w), 7):
        size = billed_size(rule, int(w[i]), int(h[i]))
        assert size[0] <= w[i]
        assert size[1] <= h[i]
        assert image_tokens(rule, *size) == tokens[i], (w[i], h[i], size)


def test_every_shipped_rule_but_openais_is_marked_approximate() -> None:
    table = load_price_table()
    for name, price in table.items():
        assert price.image is not None
        assert price.image.exact == name.startswith("gpt:"), name
