"""How each model turns an image's pixel size into prompt tokens: the rules as data.

A rule is read from the price table (`image = { rule = "...", ... }`), so a wrong number is
corrected in `configs/prices.toml`, not in code. `cost/images.py` does the arithmetic.
Each rule says whether it is `exact` (the provider publishes the formula it bills by, and
we checked it against billed usage) or an approximation (estimates mark it so, and a run
corrects it by the billed-to-estimated ratio it learns from the first answers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import UsageError


@dataclass(frozen=True, slots=True)
class TileRule:
    """OpenAI's tile models: base + per_tile * tiles of 512 px after the 2048/768 scaling."""

    base: int
    per_tile: int
    exact = True


@dataclass(frozen=True, slots=True)
class PatchRule:
    """OpenAI's patch models: 32-px patches up to `budget`, times a per-model multiplier."""

    multiplier: float
    budget: int = 1536
    exact = True


@dataclass(frozen=True, slots=True)
class CropTileRule:
    """Gemini 2.x: an image within `small` x `small` px costs `tokens`; a larger one is cut
    into square crops of side min(w, h) / 1.5 (kept between 256 and 768 px), each scaled to
    768x768 and costing `tokens`. Images over `fit` x `fit` are first scaled down to fit."""

    tokens: int = 258
    small: int = 384
    fit: int = 3072
    exact = False


@dataclass(frozen=True, slots=True)
class FixedRule:
    """A fixed number of tokens per image whatever its size (Gemini 3's media resolution),
    seen at most `fit` x `fit` px."""

    tokens: int
    fit: int = 3072
    exact = False


@dataclass(frozen=True, slots=True)
class GridRule:
    """Qwen-VL: sides rounded to multiples of `pixels` (28 or 32), scaled to hold at least
    `min_tokens` and at most `max_tokens` cells; tokens = cells + `extra`."""

    pixels: int = 32
    min_tokens: int = 4
    max_tokens: int = 2560
    extra: int = 2
    exact = False


@dataclass(frozen=True, slots=True)
class AreaRule:
    """Tokens read off a published table of (pixels, tokens), linear between its points
    and along its overall slope past them; images over `max_pixels` are scaled down to it."""

    points: tuple[tuple[int, int], ...]
    max_pixels: int
    exact = False


ImageRule = TileRule | PatchRule | CropTileRule | FixedRule | GridRule | AreaRule

# rule name -> (class, {key: (kind, required)})
_INT, _NUM = "a whole number", "a number"
_RULES: dict[str, tuple[type, dict[str, tuple[str, bool]]]] = {
    "tile": (TileRule, {"base": (_INT, True), "per_tile": (_INT, True)}),
    "patch": (PatchRule, {"multiplier": (_NUM, True), "budget": (_INT, False)}),
    "crop_tile": (
        CropTileRule,
        {"tokens": (_INT, False), "small": (_INT, False), "fit": (_INT, False)},
    ),
    "fixed": (FixedRule, {"tokens": (_INT, True), "fit": (_INT, False)}),
    "grid": (
        GridRule,
        {
            "pixels": (_INT, False),
            "min_tokens": (_INT, False),
            "max_tokens": (_INT, False),
            "extra": (_INT, False),
        },
    ),
    "area": (
        AreaRule,
        {"points": ("a list of [pixels, tokens] pairs", True), "max_pixels": (_INT, True)},
    ),
}
_NAMES = {cls: name for name, (cls, _) in _RULES.items()}


def _number(where: str, key: str, value: Any, kind: str) -> int | float:
    ok = isinstance(value, int) if kind == _INT else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < 0:
        raise UsageError(f"{where} image.{key} = {value!r}: must be {kind} >= 0")
    return value


def _points(where: str, value: Any) -> tuple[tuple[int, int], ...]:
    pairs = value if isinstance(value, list) else None
    if not pairs or not all(
        isinstance(p, list)
        and len(p) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in p)
        for p in pairs
    ):
        raise UsageError(
            f"{where} image.points = {value!r}: must be a list of [pixels, tokens] pairs "
            "of positive whole numbers"
        )
    points = tuple(sorted((int(p), int(t)) for p, t in pairs))
    if len(points) < 2 or len({p for p, _ in points}) != len(points):
        raise UsageError(f"{where} image.points: needs two or more distinct pixel counts")
    return points


def parse_image_rule(where: str, raw: Any) -> ImageRule | None:
    """A price entry's `image` table as a rule (None: the model's images are not counted)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UsageError(f"{where} image = {raw!r}: must be a table with a rule")
    name = raw.get("rule")
    if name not in _RULES:
        allowed = ", ".join(repr(n) for n in _RULES)
        raise UsageError(f"{where} image.rule = {name!r}: must be one of {allowed}")
    cls, keys = _RULES[name]
    unknown = set(raw) - {"rule", *keys}
    if unknown:
        raise UsageError(f"{where} image: unknown key {sorted(unknown)[0]!r} for rule {name!r}")
    values: dict[str, Any] = {}
    for key, (kind, required) in keys.items():
        if key not in raw:
            if required:
                raise UsageError(f"{where} image: rule {name!r} needs {key}")
            continue
        if key == "points":
            values[key] = _points(where, raw[key])
        else:
            values[key] = _number(where, key, raw[key], kind)
    if cls is PatchRule:
        values["multiplier"] = float(values["multiplier"])
    return cls(**values)


def image_rule_entry(rule: ImageRule | None) -> dict[str, Any] | None:
    """The rule as the price table writes it; `parse_image_rule` reads it back."""
    if rule is None:
        return None
    entry: dict[str, Any] = {"rule": _NAMES[type(rule)]}
    for key in _RULES[entry["rule"]][1]:
        value = getattr(rule, key)
        entry[key] = [list(p) for p in value] if key == "points" else value
    return entry


def describe_rule(rule: ImageRule | None) -> str:
    """One line for `caption prices`."""
    if rule is None:
        return "none (images not counted)"
    exactness = "" if rule.exact else " (approximate)"
    if isinstance(rule, TileRule):
        text = f"tile: {rule.base} + {rule.per_tile} per 512-px tile"
    elif isinstance(rule, PatchRule):
        text = f"patch: 32-px patches x {rule.multiplier:g}, at most {rule.budget}"
    elif isinstance(rule, CropTileRule):
        text = f"crop_tile: {rule.tokens} per 768-px crop ({rule.tokens} up to {rule.small} px)"
    elif isinstance(rule, FixedRule):
        text = f"fixed: {rule.tokens} per image"
    elif isinstance(rule, GridRule):
        text = (
            f"grid: one per {rule.pixels}-px cell, {rule.min_tokens} to {rule.max_tokens}, "
            f"+ {rule.extra}"
        )
    else:
        text = f"area: read off {len(rule.points)} published sizes, at most {rule.max_pixels:,} px"
    return text + exactness
