"""The estimate: exact prompt tokens and cost per model, before anything is sent.

Image tokens come from each image's pixel size and the model's published rule (vectorised,
so a million rows take seconds); text tokens are counted once per job with o200k_base;
prices come from `cost_usd`, the same function the run uses. Sizes, in order of
preference: the local file's header; the manifest's `width`/`height` columns; the first
bytes of the URL (`--probe-urls`, HTTP Range); `--assume-size`; else each model's worst
case, so an estimate without sizes is an upper bound, never an undercount.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.config.prices import ModelPrice
from pipeline.config.settings import JobConfig
from pipeline.cost.permodel import ImageTokens, ModelEstimate, model_estimate
from pipeline.cost.sizes import HeaderReader, Uploads, column_ints, probe_sizes
from pipeline.cost.tokens import prompt_text_tokens
from pipeline.errors import UsageError
from pipeline.http.request import worst_case_completion_tokens
from pipeline.records import MANIFEST_SOURCE
from pipeline.sources.images import is_url

log = logging.getLogger(__name__)

MAX_SKIPPED_LISTED = 1000


@dataclass(slots=True)
class SizeCounts:
    headers: int = 0  # local files, read from their headers
    columns: int = 0  # the manifest's width/height columns
    probed: int = 0  # URLs, from their first bytes
    assumed: int = 0  # --assume-size, or each model's worst case

    @property
    def measured(self) -> int:
        return self.headers + self.columns + self.probed


@dataclass(slots=True)
class Estimate:
    models: list[ModelEstimate]
    images: int
    sizes: SizeCounts
    skipped: list[dict[str, str]]
    skipped_count: int
    text_tokens_per_image: int
    expected_output_per_image: float
    expected_basis: str
    assumed_size: str
    pilot: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    # Rows the ingest dropped: the same id twice (identical bytes with --id-from content).
    duplicates: int = 0
    uploads: Uploads | None = None  # the bytes a job would send, with and without resizing
    found: int = -1  # rows the sources gave, before a folder's done rows were left out
    # --dedupe near: near-copies not sent, and what sending them would have cost.
    dedupe: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    k: v
                    for k, v in asdict(m).items()
                    if k
                    in (
                        "model",
                        "images",
                        "image_tokens",
                        "text_tokens",
                        "input_tokens",
                        "output_tokens_expected",
                        "output_tokens_max",
                        "cost_expected_usd",
                        "cost_max_usd",
                        "image_tokens_exact",
                    )
                }
                | {"cost_per_1k_usd": m.cost_per_1k_usd}
                for m in self.models
            ],
            "skipped": self.skipped,
            "skipped_count": self.skipped_count,
            "duplicates": self.duplicates,
            "upload_bytes": None
            if self.uploads is None
            else {
                "as_is": self.uploads.as_is,
                "resize_model_about": round(self.uploads.resized),
                "unknown_size_images": self.uploads.unknown,
            },
            "sizes": {
                **asdict(self.sizes),
                "measured": self.sizes.measured,
                "assumed_as": self.assumed_size,
            },
            "text_tokens_per_image": self.text_tokens_per_image,
            "expected_output_tokens_per_image": self.expected_output_per_image,
            "expected_basis": self.expected_basis,
            "pilot": self.pilot,
            "dedupe": self.dedupe,
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        s = self.sizes
        out = [
            f"{self.images} images: sizes measured for {s.measured} ({s.headers} from file "
            f"headers, {s.columns} from width/height columns, {s.probed} probed), assumed for "
            f"{s.assumed} ({self.assumed_size}); {self.skipped_count} skipped; "
            f"{self.duplicates} duplicate(s) dropped, not counted",
            f"text tokens per request: {self.text_tokens_per_image} (prompt, system prompt and "
            "chat framing, o200k_base)",
            f"expected output tokens per image: {self.expected_output_per_image:.1f} "
            f"({self.expected_basis})",
        ]
        if self.uploads is not None:
            out.append(self.uploads.line())
        if self.pilot:
            p = self.pilot
            kept = (
                f"; written to {p['written_to']}, so the run will not send these again"
                if p.get("written_to")
                else ""
            )
            out.append(
                f"pilot: {p['ok']}/{p['requests']} ok on {p['model']}, "
                f"{p['completion_tokens_mean']:.1f} completion tokens per image, "
                f"cost ${p['cost_usd']:.4f}{kept}"
            )
        if self.dedupe is not None:
            out.append(self._dedupe_line())
        out.extend(self.notes)
        header = (
            "model",
            "images",
            "image tok",
            "text tok",
            "input $",
            "out $ exp",
            "out $ max",
            "total $ exp",
            "total $ max",
            "$/1k img",
        )
        rows = [
            (
                m.model + ("" if m.image_tokens_exact else " ~"),
                f"{m.images:,}",
                f"{m.image_tokens:,}",
                f"{m.text_tokens:,}",
                f"{m.input_cost_usd:.4f}",
                f"{m.output_cost_expected_usd:.4f}",
                f"{m.output_cost_max_usd:.4f}",
                f"{m.cost_expected_usd:.4f}",
                f"{m.cost_max_usd:.4f}",
                f"{m.cost_per_1k_usd:.4f}",
            )
            for m in self.models
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        out.append("")
        for r in [header, *rows]:
            out.append(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
            )
        for item in self.skipped[:20]:
            out.append(f"skipped: {item['source']}: {item['reason']}")
        if self.skipped_count > 20:
            out.append(f"... and {self.skipped_count - 20} more skipped (see --json)")
        return out

    def _dedupe_line(self) -> str:
        d = self.dedupe or {}
        saved = ", ".join(
            f"${usd:.4f} on {model}" for model, usd in d.get("saved_expected_usd", {}).items()
        )
        return (
            f"--dedupe near (distance {d['distance']}): {d['near_copies']} image(s) are "
            f"near-copies in {d['groups']} group(s), each sent once: {d['requests_saved']} "
            f"fewer requests, {saved or '$0'} expected saved; not counted below"
        )


# ---------------------------------------------------------------------------------------
# Sizes


def estimate(
    batches: Iterable[pa.RecordBatch],
    config: JobConfig,
    models: list[str],
    *,
    assume_size: tuple[int, int] | None = None,
    probe_urls: bool = False,
    expected_output: tuple[float, str] | None = None,
    prompt_ratios: Mapping[str, float] | None = None,
) -> Estimate:
    """Estimate `batches` of manifest rows (columns id, source, optional width/height).

    `expected_output` is (completion tokens per image, where that figure comes from); by
    default the worst case. `prompt_ratios`: per model, what the server billed over what
    this estimate counted for the same prompts (a pilot's measure); those models' prompt
    tokens are scaled by it.
    """
    prices = _prices(config, models)
    req = config.request
    text = prompt_text_tokens(req.system_prompt, req.prompt, req.json_schema)
    acc = ImageTokens(prices=prices, detail=req.detail, text_tokens=text)
    sizes = SizeCounts()
    skipped: list[dict[str, str]] = []
    skipped_count = 0
    max_bytes = int(config.limits.max_image_mb * 1_000_000)
    headers = HeaderReader(max_bytes)
    uploads = Uploads(config.prices[req.model].image, req.detail)
    try:
        for batch in batches:
            widths: list[int] = []
            heights: list[int] = []
            sources = batch.column(MANIFEST_SOURCE).to_pylist()
            col_w, col_h = column_ints(batch, "width"), column_ints(batch, "height")
            to_probe: list[str] = []
            local = headers.sizes([s for s in sources if not is_url(s)])
            for i, source in enumerate(sources):
                if not is_url(source):
                    found = next(local)
                    if isinstance(found, str):
                        skipped_count += 1
                        if len(skipped) < MAX_SKIPPED_LISTED:
                            skipped.append({"source": source, "reason": found})
                        continue
                    w, h, nbytes = found
                    uploads.add(w, h, nbytes)
                    sizes.headers += 1
                elif col_w[i] and col_h[i]:
                    w, h = col_w[i], col_h[i]  # type: ignore[assignment]
                    sizes.columns += 1
                elif probe_urls:
                    to_probe.append(source)
                    continue
                else:
                    _assume(acc, sizes, assume_size, widths, heights)
                    continue
                widths.append(w)
                heights.append(h)
            if to_probe:
                for size in probe_sizes(to_probe, config.limits.concurrency):
                    if size is None:
                        _assume(acc, sizes, assume_size, widths, heights)
                    else:
                        sizes.probed += 1
                        widths.append(size[0])
                        heights.append(size[1])
            acc.add_sizes(widths, heights)
    finally:
        headers.close()
    images = sizes.measured + sizes.assumed
    acc.add_worst_cases()
    expected, basis = expected_output or (
        float(worst_case_completion_tokens(req)),
        "worst case: n x max_tokens (no pilot and no earlier output)",
    )
    results = []
    notes = []
    for i, price in enumerate(prices):
        if price.image is None:
            notes.append(
                f"{price.model}: the price table has no image rule for it, so its image "
                "tokens are not counted (text only); add image = { rule = ... } to its "
                "[prices] entry to count them"
            )
        ratio = (prompt_ratios or {}).get(price.model, 1.0)
        if ratio != 1.0:
            notes.append(
                f"{price.model}: prompt tokens scaled by {ratio:.3f}, what the server billed "
                "over this estimate's count in the pilot"
            )
        worst = worst_case_completion_tokens(req)
        results.append(model_estimate(price, acc.by_tier[i], text, expected, worst, ratio))
    if any(not m.image_tokens_exact for m in results):
        notes.append(
            "~ image tokens by the provider's published rule, which is not exact for the "
            "models marked so: a run corrects its budget by the billed-to-estimated ratio "
            "of its first answers; --pilot N measures that ratio before the run"
        )
    assumed = f"{assume_size[0]}x{assume_size[1]}" if assume_size else "each model's worst case"
    return Estimate(
        models=results,
        images=images,
        sizes=sizes,
        skipped=skipped,
        skipped_count=skipped_count,
        text_tokens_per_image=text,
        expected_output_per_image=expected,
        expected_basis=basis,
        assumed_size=assumed,
        notes=notes,
        uploads=uploads,
    )


def _assume(
    acc: ImageTokens,
    sizes: SizeCounts,
    assume_size: tuple[int, int] | None,
    widths: list[int],
    heights: list[int],
) -> None:
    sizes.assumed += 1
    if assume_size is None:
        acc.worst_case_images += 1
    else:
        widths.append(assume_size[0])
        heights.append(assume_size[1])


def _prices(config: JobConfig, models: list[str]) -> list[ModelPrice]:
    out = []
    for name in models or [config.request.model]:
        if name not in config.prices:
            raise UsageError(f"--model {name!r}: no price for this model (see `caption prices`)")
        out.append(config.prices[name])
    return out


# ---------------------------------------------------------------------------------------
# From sources (or a manifest, or an output folder) to an estimate
