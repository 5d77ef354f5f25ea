from __future__ import annotations

import random
import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from pipeline.config.imagerules import PatchRule, TileRule
from pipeline.config.prices import (
    ModelPrice,
    canonical_model,
    cost_usd,
    load_price_table,
    rates_for,
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
    gpt = {
        name: (p.input_per_1m, p.output_per_1m) for name, p in table.items() if name[:4] == "gpt:"
    }
    assert gpt == expected


PRICE = re.compile(r"\$([\d.]+)/1([MK])(?: tokens)?(?: \((?:≤|>)?(\d+)K(?:-\d+K)?\))?")


def family_prices(family: str) -> dict[str, list[tuple[int, Decimal, Decimal]]]:
    """Each model's rates on its family's page (copied in data/fixtures), as (above,
    input per 1M, output per 1M) tiers; a tier's `above` is the lower end of its range."""
    rows = {}
    for line in (FIXTURES / f"prices-{family}-ilm.txt").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("$"):
            continue
        tiers = []
        for given, taken in zip(PRICE.findall(cells[1]), PRICE.findall(cells[2]), strict=True):
            per = Decimal(1000) if given[1] == "K" else Decimal(1)
            lower = given[2]
            above = 0 if not tiers else int(lower) * 1000
            tiers.append((above, Decimal(given[0]) * per, Decimal(taken[0]) * per))
        rows[f"{family}:{cells[0]}"] = tiers
    return rows


@pytest.mark.parametrize(("family", "models"), [("gemini", 9), ("qwen", 14), ("nova", 4)])
def test_every_family_table_matches_its_page(family: str, models: int) -> None:
    expected = family_prices(family)
    assert len(expected) == models
    table = load_price_table()
    listed = {name for name in table if name.startswith(f"{family}:")}
    assert listed == set(expected)
    for name, tiers in expected.items():
        price = table[name]
        got = [(0, price.input_per_1m, price.output_per_1m)] + [
            (t.above, t.input_per_1m, t.output_per_1m) for t in price.tiers
        ]
        assert got == [(a, float(i), float(o)) for a, i, o in tiers], name
    assert table.pages[family].endswith(f"/api-reference/{family}/{family}-ilm")


def test_a_tier_is_chosen_by_the_prompt_tokens_of_one_request() -> None:
    pro = load_price_table()["gemini:gemini-2.5-pro"]
    assert cost_usd(pro, 200_000, 1_000) == 0.25 + 0.01  # at the boundary: the low tier
    assert cost_usd(pro, 200_001, 1_000) == float(
        (200_001 * Fraction("2.5") + 1_000 * Fraction(15)) / 1_000_000
    )
    flash = load_price_table()["qwen:qwen3-vl-flash"]
    assert rates_for(flash, 32_000).input_per_1m == 0.052
    assert rates_for(flash, 32_001).input_per_1m == 0.079
    assert rates_for(flash, 128_001).output_per_1m == 1.01


def test_unprefixed_names_are_found_in_their_family() -> None:
    table = load_price_table()
    assert table.resolve("us.amazon.nova-lite-v1:0") == "nova:us.amazon.nova-lite-v1:0"
    assert table.resolve("gemini-2.0-flash-lite") == "gemini:gemini-2.0-flash-lite"
    assert table.resolve("gpt-4o") == "gpt:gpt-4o"
    assert table.resolve("qwen:gpt-4o") is None  # a family's prefix is taken at its word


def test_every_model_has_an_image_rule() -> None:
    table = load_price_table()
    assert all(p.image is not None for p in table.values())
    assert all(
        isinstance(p.image, TileRule | PatchRule) for n, p in table.items() if n[:4] == "gpt:"
    )
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
        price = rates_for(price, prompt)  # the tier of this request, for tiered prices
        cached_rate = price.cached_input_per_1m
        exact = (
            (prompt - cached) * Fraction(str(price.input_per_1m))
            + cached * Fraction(str(price.input_per_1m if cached_rate is None else cached_rate))
            + completion * Fraction(str(price.output_per_1m))
        ) / 1_000_000
        assert cost_usd(price, prompt, completion, cached) == float(exact), (price, prompt)
        assert cost_usd(price, prompt, completion, cached) == cost_usd(
            table.get(price.model, price), prompt, completion, cached
        )


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
