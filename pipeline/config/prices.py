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

from pipeline.config.imagerules import ImageRule, image_rule_entry, parse_image_rule
from pipeline.errors import UsageError

DEFAULT_PROVIDER = "gpt"
# memories.ai's model families, picked by the model name's prefix (`gemini:...`).
FAMILIES = ("gpt", "gemini", "qwen", "nova")
_TOKENS_PER_UNIT = 1_000_000


def family_of(model: str) -> str | None:
    """The family a model name's prefix names, or None (no prefix, or not a family)."""
    prefix = model.strip().split(":", 1)[0]
    return prefix if prefix in FAMILIES and ":" in model else None


def canonical_model(name: str) -> str:
    """`gpt-4o` and `gpt:gpt-4o` name the same model; the prefixed form is canonical."""
    name = name.strip()
    return name if ":" in name else f"{DEFAULT_PROVIDER}:{name}"


@dataclass(frozen=True, slots=True)
class Tier:
    """The rates of a request whose prompt is over `above` tokens (a tiered price)."""

    above: int
    input_per_1m: float
    output_per_1m: float


@dataclass(frozen=True, slots=True)
class ModelPrice:
    model: str
    input_per_1m: float
    output_per_1m: float
    image: ImageRule | None = None
    cached_input_per_1m: float | None = None
    tiers: tuple[Tier, ...] = ()  # ascending `above`; the plain rates apply below them all


def rates_for(price: ModelPrice, prompt_tokens: int) -> ModelPrice:
    """The flat price one request pays: its tier is chosen by its prompt tokens."""
    for tier in reversed(price.tiers):
        if prompt_tokens > tier.above:
            return ModelPrice(price.model, tier.input_per_1m, tier.output_per_1m, price.image)
    return price


def cost_usd(
    price: ModelPrice,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
) -> float:
    """USD for one request's usage: exact arithmetic, one rounding to float at the end.

    A tiered price is charged at the tier of this request's prompt tokens. Cached prompt
    tokens are a subset of `prompt_tokens`; they cost `cached_input_per_1m` when the table
    sets it, otherwise the plain input price.
    """
    cached = min(max(cached_tokens, 0), prompt_tokens)
    input_rate, cached_rate, output_rate, denominator = _integer_rates(
        rates_for(price, prompt_tokens)
    )
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
    """Models by canonical name; a lookup by a name without its family prefix finds the
    model in whichever family lists it (`gpt-4o`, `us.amazon.nova-lite-v1:0`). `pages`:
    each family's price page, where its numbers come from."""

    def __init__(
        self, prices: Mapping[str, ModelPrice], pages: Mapping[str, str] | None = None
    ) -> None:
        self._prices = {canonical_model(k): v for k, v in prices.items()}
        self.pages = dict(pages or {})

    def resolve(self, name: str) -> str | None:
        """The table's own name for `name`, or None if it lists no such model."""
        key = canonical_model(name)
        if key in self._prices:
            return key
        if family_of(name) is None:
            for family in FAMILIES:
                if (prefixed := f"{family}:{name.strip()}") in self._prices:
                    return prefixed
        return None

    def __getitem__(self, name: str) -> ModelPrice:
        key = self.resolve(name)
        if key is None:
            raise KeyError(name)
        return self._prices[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def with_overrides(self, overrides: Mapping[str, ModelPrice]) -> PriceTable:
        merged = dict(self._prices)
        merged.update({canonical_model(k): v for k, v in overrides.items()})
        return PriceTable(merged, self.pages)


def _number(where: str, key: str, value: Any, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < 0:
        kind = "a whole number" if integer else "a number"
        raise UsageError(f"{where} {key} = {value!r}: must be {kind} >= 0")
    return value


_PRICE_KEYS = {"input_per_1m", "output_per_1m", "cached_input_per_1m", "image", "tiers"}


def _tiers(where: str, raw: Any) -> tuple[Tier, ...]:
    if raw is None:
        return ()
    shape = "a list of { above = N, input_per_1m = X, output_per_1m = Y }"
    if not isinstance(raw, list) or not all(
        isinstance(t, dict) and set(t) == {"above", "input_per_1m", "output_per_1m"} for t in raw
    ):
        raise UsageError(f"{where} tiers = {raw!r}: must be {shape}")
    tiers = tuple(
        Tier(
            above=int(_number(where, "tiers.above", t["above"], integer=True)),
            input_per_1m=float(_number(where, "tiers.input_per_1m", t["input_per_1m"])),
            output_per_1m=float(_number(where, "tiers.output_per_1m", t["output_per_1m"])),
        )
        for t in raw
    )
    aboves = [t.above for t in tiers]
    if aboves != sorted(set(aboves)):
        raise UsageError(f"{where} tiers: `above` must rise from one tier to the next")
    return tiers


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
            image=parse_image_rule(label, entry.get("image")),
            tiers=_tiers(label, entry.get("tiers")),
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
    if price.image is not None:
        entry["image"] = image_rule_entry(price.image)
    if price.tiers:
        entry["tiers"] = [
            {"above": t.above, "input_per_1m": t.input_per_1m, "output_per_1m": t.output_per_1m}
            for t in price.tiers
        ]
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
    pages = raw.get("pages", {})
    if not isinstance(pages, dict) or not all(isinstance(v, str) for v in pages.values()):
        raise UsageError(f"price table {path}: [pages] must map a family to its page's URL")
    return PriceTable(parse_price_entries(models, str(path)), pages)
