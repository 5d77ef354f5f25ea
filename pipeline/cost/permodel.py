"""Per-model sums of an estimate: image tokens fed batch by batch, grouped by price tier,
and their prices (`ModelEstimate`). `estimate.py` reads the sources and calls these."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.config.prices import ModelPrice, cost_usd, rates_for
from pipeline.cost.images import image_tokens_array, max_image_tokens


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    model: str
    images: int
    image_tokens: int
    text_tokens: int
    input_tokens: int
    output_tokens_expected: int
    output_tokens_max: int
    input_cost_usd: float
    output_cost_expected_usd: float
    output_cost_max_usd: float
    cost_expected_usd: float
    cost_max_usd: float
    image_tokens_exact: bool = True  # False: the model's image rule is approximate

    @property
    def cost_per_1k_usd(self) -> float:
        """Expected USD per 1,000 images: what compares models side by side."""
        return self.cost_expected_usd / self.images * 1000 if self.images else 0.0


@dataclass(slots=True)
class ImageTokens:
    """Per-model image-token sums, fed batch by batch: memory stays flat in the row count.

    Sums are kept per price tier: a tiered price is chosen by each request's own prompt
    tokens (its image's and the job's text), so images are grouped by the tier they fall in.
    """

    prices: list[ModelPrice]
    detail: str | None
    text_tokens: int
    # per model: tier index -> [image tokens, images]
    by_tier: list[dict[int, list[int]]] = field(default_factory=list)
    worst_case_images: int = 0

    def __post_init__(self) -> None:
        self.by_tier = [{} for _ in self.prices]

    def _add(self, i: int, tokens: np.ndarray) -> None:
        price = self.prices[i]
        aboves = np.array([t.above for t in price.tiers], dtype=np.int64)
        tiers = np.searchsorted(aboves, tokens + self.text_tokens, side="left")
        for tier in np.unique(tiers):
            chosen = tokens[tiers == tier]
            sums = self.by_tier[i].setdefault(int(tier), [0, 0])
            sums[0] += int(chosen.sum())
            sums[1] += len(chosen)

    def add_sizes(self, widths: list[int], heights: list[int]) -> None:
        if not widths:
            return
        w, h = np.asarray(widths, dtype=np.int64), np.asarray(heights, dtype=np.int64)
        for i, price in enumerate(self.prices):
            if price.image is None:  # a custom model without a rule: text only
                self._add(i, np.zeros(len(w), dtype=np.int64))
            else:
                self._add(i, image_tokens_array(price.image, w, h, self.detail))

    def add_worst_cases(self) -> None:
        """Images of unknown size, each at its model's worst case."""
        for i, price in enumerate(self.prices):
            worst = 0 if price.image is None else max_image_tokens(price.image, self.detail)
            self._add(i, np.full(self.worst_case_images, worst, dtype=np.int64))


def model_estimate(
    price: ModelPrice,
    by_tier: dict[int, list[int]],
    text_per_image: int,
    expected_per_image: float,
    max_per_image: int,
    prompt_ratio: float = 1.0,
) -> ModelEstimate:
    """Each tier's images priced at that tier's rates, summed; prompts scaled by
    `prompt_ratio` (billed over counted, as a pilot measured it)."""
    images = image_tokens = input_tokens = out_expected = out_max = 0
    input_usd = out_expected_usd = out_max_usd = expected_usd = max_usd = 0.0
    for tier, (tokens, count) in sorted(by_tier.items()):
        rates = price if tier == 0 else rates_for(price, price.tiers[tier - 1].above + 1)
        prompt = round((tokens + text_per_image * count) * prompt_ratio)
        expected = round(expected_per_image * count)
        images += count
        image_tokens += tokens
        input_tokens += prompt
        out_expected += expected
        out_max += max_per_image * count
        input_usd += cost_usd(rates, prompt, 0)
        out_expected_usd += cost_usd(rates, 0, expected)
        out_max_usd += cost_usd(rates, 0, max_per_image * count)
        # Totals priced whole, tier by tier: one rounding per tier, as the run prices rows.
        expected_usd += cost_usd(rates, prompt, expected)
        max_usd += cost_usd(rates, prompt, max_per_image * count)
    text = text_per_image * images
    return ModelEstimate(
        model=price.model,
        images=images,
        image_tokens=image_tokens,
        text_tokens=text,
        input_tokens=input_tokens,
        output_tokens_expected=out_expected,
        output_tokens_max=out_max,
        input_cost_usd=input_usd,
        output_cost_expected_usd=out_expected_usd,
        output_cost_max_usd=out_max_usd,
        cost_expected_usd=expected_usd,
        cost_max_usd=max_usd,
        image_tokens_exact=price.image is None or price.image.exact,
    )
