"""Prompt tokens of an image, by each model's published rule (`config/imagerules.py`).

Pure functions of pixel sizes, shared by `estimate`, the run's budget and rate limits,
`--resize model` and the fake endpoint's usage blocks. The rules' numbers come from the
price table (`configs/prices.toml`), not from code. Where each rule comes from:

- tile, patch: OpenAI's vision guide, "Calculating costs" (exact: checked against billed
  usage).
- crop_tile: Google's Gemini docs, "Understand and count tokens" / Vertex AI "Image
  understanding": Gemini 2.x counts an image with both sides <= 384 px as 258 tokens;
  a larger one is cropped into tiles of min(w, h) / 1.5 px (kept within 256..768), each
  scaled to 768x768 and counted as 258; images are first scaled to fit 3072x3072.
- fixed: Gemini 3's `media_resolution` (high, the default for images: 1120 tokens).
- grid: Alibaba Model Studio, "Image and video understanding" (token calculation):
  tokens = h_bar * w_bar / (32 * 32) + 2, with each side rounded to 32 px (28 px for the
  Qwen2.5-VL models) and the area kept within [min_tokens, max_tokens] cells.
- area: Amazon Nova User Guide, "Image understanding": a table of image sizes and their
  approximate token counts.

Only tile and patch are exact; estimates mark the others approximate.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np

from pipeline.config.imagerules import (
    AreaRule,
    CropTileRule,
    FixedRule,
    GridRule,
    ImageRule,
    PatchRule,
    TileRule,
)

TILE_FIT = 2048
TILE_SHORT_SIDE = 768
TILE_SIZE = 512
PATCH_SIZE = 32
CROP_TILE_MIN, CROP_TILE_MAX = 256, 768


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


def _fitted(w: np.ndarray, h: np.ndarray, fit: int) -> tuple[np.ndarray, np.ndarray]:
    """The size an image is scaled down to so that it fits `fit` x `fit` (never enlarged)."""
    longest = np.maximum(w, h)
    over = longest > fit
    scale_w = np.where(over, np.maximum(1, w * fit // np.maximum(longest, 1)), w)
    scale_h = np.where(over, np.maximum(1, h * fit // np.maximum(longest, 1)), h)
    return scale_w, scale_h


def crop_tile_counts(rule: CropTileRule, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    w, h = _fitted(w, h, rule.fit)
    unit = np.clip(np.minimum(w, h) * 2 // 3, CROP_TILE_MIN, CROP_TILE_MAX)
    tiles = _ceil_div(w, unit) * _ceil_div(h, unit)
    return np.where((w <= rule.small) & (h <= rule.small), 1, tiles)


def grid_size(rule: GridRule, w: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The size a Qwen-VL model sees: sides rounded to the grid, the area kept in bounds."""
    f = rule.pixels
    wf, hf = w.astype(np.float64), h.astype(np.float64)
    w_bar = np.round(wf / f) * f
    h_bar = np.round(hf / f) * f
    most, least = rule.max_tokens * f * f, rule.min_tokens * f * f
    down = np.sqrt(wf * hf / most)
    up = np.sqrt(least / (wf * hf))
    over, under = w_bar * h_bar > most, w_bar * h_bar < least
    w_bar = np.where(
        over, np.floor(wf / down / f) * f, np.where(under, np.ceil(wf * up / f) * f, w_bar)
    )
    h_bar = np.where(
        over, np.floor(hf / down / f) * f, np.where(under, np.ceil(hf * up / f) * f, h_bar)
    )
    return np.maximum(w_bar, f).astype(np.int64), np.maximum(h_bar, f).astype(np.int64)


def area_tokens(rule: AreaRule, pixels: np.ndarray) -> np.ndarray:
    """Linear between the table's points, along its overall slope outside them."""
    xs = np.array([p for p, _ in rule.points], dtype=np.float64)
    ys = np.array([t for _, t in rule.points], dtype=np.float64)
    slope = (ys[-1] - ys[0]) / (xs[-1] - xs[0])
    px = np.minimum(pixels.astype(np.float64), rule.max_pixels)
    inside = np.interp(px, xs, ys)
    outside = np.where(px < xs[0], ys[0] + (px - xs[0]) * slope, ys[-1] + (px - xs[-1]) * slope)
    tokens = np.where((px >= xs[0]) & (px <= xs[-1]), inside, outside)
    return np.maximum(1, np.ceil(tokens)).astype(np.int64)


def image_tokens_array(
    rule: ImageRule, width: np.ndarray, height: np.ndarray, detail: str | None = None
) -> np.ndarray:
    """Prompt tokens per image for arrays of pixel sizes (all must be positive). `detail`
    means something to OpenAI's tile models only."""
    w, h = width.astype(np.int64), height.astype(np.int64)
    if isinstance(rule, TileRule):
        if detail == "low":
            return np.full(len(w), rule.base, dtype=np.int64)
        return rule.base + rule.per_tile * tile_counts(w, h)
    if isinstance(rule, PatchRule):
        # ceil(patches * multiplier) as an exact fraction: 100 patches * 1.62 is 162, not 163.
        multiplier = Fraction(str(rule.multiplier))
        patches = patch_counts(w, h, rule.budget)
        return _ceil_div(patches * multiplier.numerator, multiplier.denominator)
    if isinstance(rule, CropTileRule):
        return rule.tokens * crop_tile_counts(rule, w, h)
    if isinstance(rule, FixedRule):
        return np.full(len(w), rule.tokens, dtype=np.int64)
    if isinstance(rule, GridRule):
        w_bar, h_bar = grid_size(rule, w, h)
        return w_bar * h_bar // (rule.pixels * rule.pixels) + rule.extra
    return area_tokens(rule, w * h)


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
    if isinstance(rule, PatchRule):
        return math.ceil(Fraction(str(rule.multiplier)) * rule.budget)
    if isinstance(rule, CropTileRule):
        return rule.tokens * _most_crop_tiles(rule.fit)
    if isinstance(rule, FixedRule):
        return rule.tokens
    if isinstance(rule, GridRule):
        return rule.max_tokens + rule.extra
    return int(area_tokens(rule, np.array([rule.max_pixels]))[0])


@functools.cache
def _most_crop_tiles(fit: int) -> int:
    """The most crops any image can make once fitted into `fit` x `fit`: every longest
    side is `fit` after fitting (or smaller, making fewer), so one row of shorter sides
    covers every shape."""
    short = np.arange(1, fit + 1, dtype=np.int64)
    rule = CropTileRule(small=0, fit=fit)
    return int(crop_tile_counts(rule, np.full(fit, fit, dtype=np.int64), short).max())


def billed_size(
    rule: ImageRule, width: int, height: int, detail: str | None = None
) -> tuple[int, int]:
    """The size at which the model sees (and bills) an image: the most an upload needs.
    Never larger than the image. Sending exactly this size bills the same tokens as the
    original (`image_tokens` of both agree; `engine/prepare.py` checks it for every image)."""
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
    w, h = np.array([width]), np.array([height])
    if isinstance(rule, PatchRule):
        rw, rh = patch_resized(w, h, rule.budget)
    elif isinstance(rule, CropTileRule | FixedRule):
        rw, rh = _fitted(w, h, rule.fit)
    elif isinstance(rule, GridRule):
        f = rule.pixels
        if round(width / f) * round(height / f) <= rule.max_tokens:
            return width, height  # within bounds: seen as it is, give or take rounding
        rw, rh = grid_size(rule, w, h)
        if rw[0] > width or rh[0] > height:
            return width, height  # a side rounded up: no smaller size bills the same
    else:
        if width * height <= rule.max_pixels:
            return width, height
        shrink = math.sqrt(rule.max_pixels / (width * height))
        # Up to whole pixels: the area stays at or over the cap, so the tokens are the same.
        return min(width, math.ceil(width * shrink)), min(height, math.ceil(height * shrink))
    return min(width, max(1, int(rw[0]))), min(height, max(1, int(rh[0])))
