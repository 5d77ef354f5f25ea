"""The price table and the one pure function that turns token usage into US dollars.

The table lives in `configs/prices.toml` (shipped inside the wheel as `pipeline/prices.toml`).
Each model also carries the rule that turns an image's pixel size into prompt tokens, so a
wrong number can be corrected in data, not code. `estimate` and `run` both price rows with
`cost_usd`.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError

DEFAULT_PROVIDER = "gpt"
_TOKENS_PER_UNIT = 1_000_000


def canonical_model(name: str) -> str:
    """`gpt-4o` and `gpt:gpt-4o` name the same model; the prefixed form is canonical."""
    name = name.strip()
    return name if ":" in name else f"{DEFAULT_PROVIDER}:{name}"


@dataclass(frozen=True, slots=True)
class TileRule:
    """Tile models: base + per_tile * tiles of 512 px after the 2048/768 scaling."""

    base: int
    per_tile: int


@dataclass(frozen=True, slots=True)
class PatchRule:
    """Patch models: 32-px patches up to `budget`, times a per-model multiplier."""

    multiplier: float
    budget: int = 1536


ImageRule = TileRule | PatchRule


@dataclass(frozen=True, slots=True)
class ModelPrice:
    model: str
    input_per_1m: float
    output_per_1m: float
    image: ImageRule | None = None
    cached_input_per_1m: float | None = None


def cost_usd(
    price: ModelPrice,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
) -> float:
    """USD for one request's usage: exact arithmetic, one rounding to float at the end.

    Cached prompt tokens are a subset of `prompt_tokens`; they cost `cached_input_per_1m`
    when the table sets it, otherwise the plain input price.
    """
    cached = min(max(cached_tokens, 0), prompt_tokens)
    input_rate, cached_rate, output_rate, denominator = _integer_rates(price)
    total = (
        (prompt_tokens - cached) * input_rate
        + cached * cached_rate
        + completion_tokens * output_rate
    )
    return total / denominator  # int / int: the exact quotient, correctly rounded


@functools.cache
def _integer_rates(price: ModelPrice) -> tuple[int, int, int, int]:
    """The three rates as integers over one denominator (per token), worked out once per
    price from each rate's shortest decimal form, so that 0.15 means exactly 15/100."""
    cached = price.input_per_1m if price.cached_input_per_1m is None else price.cached_input_per_1m
    rates = [Decimal(str(r)) for r in (price.input_per_1m, cached, price.output_per_1m)]
    places = max(0, *(-int(r.as_tuple().exponent) for r in rates))
    scale = 10**places
    input_rate, cached_rate, output_rate = (int(r * scale) for r in rates)
    return input_rate, cached_rate, output_rate, scale * _TOKENS_PER_UNIT


class PriceTable(Mapping[str, ModelPrice]):
    """Models by canonical name; lookups accept names with or without the `gpt:` prefix."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = {canonical_model(k): v for k, v in prices.items()}

    def __getitem__(self, name: str) -> ModelPrice:
        return self._prices[canonical_model(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_model(name) in self._prices

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def with_overrides(self, overrides: Mapping[str, ModelPrice]) -> PriceTable:
        merged = dict(self._prices)
        merged.update({canonical_model(k): v for k, v in overrides.items()})
        return PriceTable(merged)


def _number(where: str, key: str, value: Any, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < 0:
        kind = "a whole number" if integer else "a number"
        raise UsageError(f"{where} {key} = {value!r}: must be {kind} >= 0")
    return value


def _image_rule(where: str, raw: Any) -> ImageRule | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UsageError(f"{where} image = {raw!r}: must be a table with a rule")
    rule = raw.get("rule")
    if rule == "tile":
        unknown = set(raw) - {"rule", "base", "per_tile"}
        if unknown:
            raise UsageError(f"{where} image: unknown key {sorted(unknown)[0]!r} for rule 'tile'")
        base = int(_number(where, "image.base", raw.get("base"), integer=True))
        per_tile = int(_number(where, "image.per_tile", raw.get("per_tile"), integer=True))
        return TileRule(base=base, per_tile=per_tile)
    if rule == "patch":
        unknown = set(raw) - {"rule", "multiplier", "budget"}
        if unknown:
            raise UsageError(f"{where} image: unknown key {sorted(unknown)[0]!r} for rule 'patch'")
        multiplier = _number(where, "image.multiplier", raw.get("multiplier"))
        budget = int(_number(where, "image.budget", raw.get("budget", 1536), integer=True))
        return PatchRule(multiplier=float(multiplier), budget=budget)
    raise UsageError(f"{where} image.rule = {rule!r}: must be 'tile' or 'patch'")


_PRICE_KEYS = {"input_per_1m", "output_per_1m", "cached_input_per_1m", "image"}


def parse_price_entries(
    raw: Mapping[str, Any], where: str, table: str = "models"
) -> dict[str, ModelPrice]:
    """Validate `[table."model"]` entries (input_per_1m, output_per_1m, ...) read from TOML."""
    out: dict[str, ModelPrice] = {}
    for name, entry in raw.items():
        label = f'{where}: [{table}."{name}"]'
        if not isinstance(entry, dict):
            raise UsageError(f"{label}: must be a table with input_per_1m and output_per_1m")
        unknown = set(entry) - _PRICE_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise UsageError(
                f"{label} {key}: unknown key; allowed: {', '.join(sorted(_PRICE_KEYS))}"
            )
        for required in ("input_per_1m", "output_per_1m"):
            if required not in entry:
                raise UsageError(f"{label}: missing {required}")
        cached = entry.get("cached_input_per_1m")
        model = canonical_model(name)
        out[model] = ModelPrice(
            model=model,
            input_per_1m=float(_number(label, "input_per_1m", entry["input_per_1m"])),
            output_per_1m=float(_number(label, "output_per_1m", entry["output_per_1m"])),
            cached_input_per_1m=None
            if cached is None
            else float(_number(label, "cached_input_per_1m", cached)),
            image=_image_rule(label, entry.get("image")),
        )
    return out


def price_entry(price: ModelPrice) -> dict[str, Any]:
    """A price as the table writes it; `parse_price_entries` reads it back (run.json)."""
    entry: dict[str, Any] = {
        "input_per_1m": price.input_per_1m,
        "output_per_1m": price.output_per_1m,
    }
    if price.cached_input_per_1m is not None:
        entry["cached_input_per_1m"] = price.cached_input_per_1m
    if isinstance(price.image, TileRule):
        entry["image"] = {
            "rule": "tile",
            "base": price.image.base,
            "per_tile": price.image.per_tile,
        }
    elif isinstance(price.image, PatchRule):
        entry["image"] = {
            "rule": "patch",
            "multiplier": price.image.multiplier,
            "budget": price.image.budget,
        }
    return entry


def default_prices_path() -> Path:
    """The shipped table: inside the wheel, or `configs/prices.toml` in a source checkout."""
    packaged = Path(__file__).with_name("prices.toml")  # not importlib.resources: 6 ms
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "configs" / "prices.toml"


def load_price_table(path: Path | None = None) -> PriceTable:
    path = path or default_prices_path()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"price table {path}: cannot read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"price table {path}: not valid TOML ({exc})") from exc
    models = raw.get("models")
    if not isinstance(models, dict) or not models:
        raise UsageError(f'price table {path}: no [models."..."] tables')
    return PriceTable(parse_price_entries(models, str(path)))
