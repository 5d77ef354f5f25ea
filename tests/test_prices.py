from __future__ import annotations

import random
import re
from fractions import Fraction
from pathlib import Path

import pytest

from pipeline.config.prices import (
    ModelPrice,
    PatchRule,
    TileRule,
    canonical_model,
    cost_usd,
    load_price_table,
)
from pipeline.errors import UsageError
from tests.helpers import FIXTURES

ROW = re.compile(r"^\| ([a-z0-9.\-]+) \| \$([\d.]+)/1M tokens \| \$([\d.]+)/1M tokens \|$")


def reference_prices() -> dict[str, tuple[float, float]]:
    """Every price row of the endpoint's reference page (a copy kept in data/fixtures)."""
    text = (FIXTURES / "ilm-chat-completions.txt").read_text()
    rows = {}
    for line in text.splitlines():
        m = ROW.match(line.strip())
        if m:
            rows[f"gpt:{m[1]}"] = (float(m[2]), float(m[3]))
    return rows


def test_table_matches_reference_page_exactly() -> None:
    expected = reference_prices()
    assert len(expected) == 33
    table = load_price_table()
    assert {name: (p.input_per_1m, p.output_per_1m) for name, p in table.items()} == expected


def test_every_model_has_an_image_rule() -> None:
    table = load_price_table()
    assert all(isinstance(p.image, TileRule | PatchRule) for p in table.values())
    assert table["gpt-4o"].image == TileRule(base=85, per_tile=170)
    assert table["gpt-4o-mini"].image == TileRule(base=2833, per_tile=5667)
    assert table["gpt-5-mini"].image == PatchRule(multiplier=1.2, budget=1536)


def test_names_with_and_without_prefix() -> None:
    table = load_price_table()
    assert canonical_model("gpt-4o") == "gpt:gpt-4o"
    assert canonical_model("gemini:flash") == "gemini:flash"
    assert table["gpt-4o"] is table["gpt:gpt-4o"]
    assert "o3" in table
    assert "gpt:no-such-model" not in table


def test_cost_is_exact_decimal() -> None:
    price = ModelPrice("gpt:gpt-4o", input_per_1m=2.5, output_per_1m=10.0)
    # 1000 * 2.5 / 1e6 + 500 * 10 / 1e6 = 0.0025 + 0.005
    assert cost_usd(price, 1000, 500) == 0.0075
    # Floats would give 0.30000000000000004 for 0.1 + 0.2 style sums; decimals do not.
    nano = ModelPrice("gpt:gpt-4.1-nano", input_per_1m=0.1, output_per_1m=0.4)
    assert cost_usd(nano, 1_000_000, 500_000) == 0.3
    assert cost_usd(price, 0, 0) == 0.0


def test_cost_is_the_exact_sum_rounded_once() -> None:
    # The definition: each rate is the decimal it is written as; the sum is exact; one
    # rounding to the nearest float at the end.
    rng = random.Random(7)
    table = load_price_table()
    prices = [*table.values()]
    prices += [
        ModelPrice("gpt:x", input_per_1m=0.075, output_per_1m=1e-07, cached_input_per_1m=0.0375),
        ModelPrice("gpt:y", input_per_1m=1e20, output_per_1m=123.456789),
    ]
    for _ in range(5000):
        price = rng.choice(prices)
        prompt = rng.randrange(0, 10 ** rng.randrange(1, 10))
        cached = rng.randrange(0, prompt + 1)
        completion = rng.randrange(0, 10 ** rng.randrange(1, 8))
        cached_rate = price.cached_input_per_1m
        exact = (
            (prompt - cached) * Fraction(str(price.input_per_1m))
            + cached * Fraction(str(price.input_per_1m if cached_rate is None else cached_rate))
            + completion * Fraction(str(price.output_per_1m))
        ) / 1_000_000
        assert cost_usd(price, prompt, completion, cached) == float(exact), (price, prompt)


def test_cached_tokens_use_cached_price_when_set() -> None:
    plain = ModelPrice("gpt:x", input_per_1m=2.0, output_per_1m=8.0)
    cached = ModelPrice("gpt:x", input_per_1m=2.0, output_per_1m=8.0, cached_input_per_1m=0.5)
    assert cost_usd(plain, 1000, 0, cached_tokens=400) == 0.002
    assert cost_usd(cached, 1000, 0, cached_tokens=400) == 600 * 2.0 / 1e6 + 400 * 0.5 / 1e6


def test_bad_table_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text('[models."gpt:x"]\ninput_per_1m = "cheap"\noutput_per_1m = 1.0\n')
    with pytest.raises(UsageError, match=r'prices\.toml: \[models\."gpt:x"\] input_per_1m'):
        load_price_table(bad)
