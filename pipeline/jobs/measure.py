"""A comparison's variant, measured from its own output folder: rows, errors, cost as
billed, latency, answer length, the projected cost of the whole source, and its scores
against truth or against the other variants (`quality/scores.py`)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config.settings import JobConfig
from pipeline.cost.estimate import estimate
from pipeline.io.arrow import read_parquet
from pipeline.jobs.sample import sample_column
from pipeline.output import books
from pipeline.output.folder import OutputDir
from pipeline.quality.scores import agreement, truth_scores


@dataclass(slots=True)
class VariantFigures:
    variant: str
    model: str
    prompt: str
    rows: int = 0
    ok: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0  # as billed, every paid attempt
    cost_per_1k_usd: float = 0.0
    projected_cost_usd: float = 0.0  # the whole source, at the sample's billed rate
    source_images: int = 0
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    mean_caption_chars: float | None = None
    scores: dict[str, float | None] = field(default_factory=dict)  # accuracy_x, agreement_x
    quality: float | None = None  # the mean of its accuracies, else of its agreements
    answers: dict[str, Any] = field(default_factory=dict)  # id -> parsed answer or caption

    def as_row(self) -> dict[str, Any]:
        row = {
            k: getattr(self, k)
            for k in (
                "variant",
                "model",
                "prompt",
                "rows",
                "ok",
                "errors",
                "cost_usd",
                "cost_per_1k_usd",
                "projected_cost_usd",
                "source_images",
                "latency_p50_s",
                "latency_p95_s",
                "mean_caption_chars",
            )
        }
        row["errors_by_kind"] = json.dumps(self.errors_by_kind, sort_keys=True)
        return {**row, **self.scores, "quality": self.quality}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_variant(
    name: str,
    config: JobConfig,
    prompt_name: str,
    folder: Path,
    sample: Path,
    full: Path,
    source_images: int,
) -> VariantFigures:
    out = OutputDir(folder)
    shards = out.shards()
    columns = ["id", "status", "caption", "latency_s", "prompt_tokens"]
    columns += ["completion_tokens", "usage_source", "image_width", "image_height"]
    tables = [read_parquet(s) for s in shards]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    f = VariantFigures(name, config.request.model, prompt_name or "(the job's)")
    f.source_images = source_images
    if table is None or table.num_rows == 0:
        return f
    rows = table.select([c for c in columns if c in table.column_names]).to_pylist()
    parsed = table["parsed"].to_pylist() if "parsed" in table.column_names else [None] * len(rows)
    ok = [(r, p) for r, p in zip(rows, parsed, strict=True) if r["status"] == "ok"]
    f.rows, f.ok, f.errors = len(rows), len(ok), len(rows) - len(ok)
    done = books.scan(out)
    f.errors_by_kind, f.cost_usd = done.errors_by_kind, done.cost_usd
    f.cost_per_1k_usd = f.cost_usd / f.rows * 1000
    f.latency_p50_s = _percentile([r["latency_s"] for r, _ in ok], 0.5)
    f.latency_p95_s = _percentile([r["latency_s"] for r, _ in ok], 0.95)
    texts = [len(r["caption"]) for r, _ in ok if r["caption"] is not None]
    f.mean_caption_chars = statistics.fmean(texts) if texts else None
    f.answers = {r["id"]: _answer(r["caption"], p) for r, p in ok}
    f.projected_cost_usd = _projected(config, rows, ok, sample, full)
    return f


def _answer(caption: str | None, parsed: Any) -> Any:
    if isinstance(parsed, str):  # a json_object job keeps the JSON text
        try:
            return json.loads(parsed)
        except ValueError:
            return parsed
    return parsed if parsed is not None else caption


def _projected(
    config: JobConfig, rows: list[dict[str, Any]], ok: list[Any], sample: Path, full: Path
) -> float:
    """The whole source's expected cost: this estimate's exact count of every image, the
    prompt scaled by what the server billed for the sample against the same count, and
    the sample's mean completion length."""
    model = config.request.model
    billed = [r for r in rows if r["usage_source"] == "server" and r["prompt_tokens"]]
    counted = estimate(pq.ParquetFile(sample).iter_batches(), config, [model]).models[0]
    ratio = 1.0
    if billed and counted.images and counted.input_tokens:
        per_image = counted.input_tokens / counted.images
        ratio = sum(r["prompt_tokens"] for r in billed) / (per_image * len(billed))
    mean_out = statistics.fmean(r["completion_tokens"] for r, _ in ok) if ok else None
    expected = (mean_out, "the sample's mean") if mean_out is not None else None
    whole = estimate(
        pq.ParquetFile(full).iter_batches(),
        config,
        [model],
        expected_output=expected,
        prompt_ratios={counted.model: ratio},
    )
    return whole.models[0].cost_expected_usd


def score_variants(
    figures: list[VariantFigures], sample: Path, truth: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Fill each variant's scores and quality; returns the consensus per field (id ->
    value) when there is no truth."""
    consensus: dict[str, dict[str, Any]] = {}
    if truth:
        for field_name, column in truth.items():
            expected = sample_column(sample, column)
            for f in figures:
                got = truth_scores(_structured(f), expected, field_name)
                f.scores[f"accuracy_{field_name}"] = got.accuracy
                if got.mae is not None:
                    f.scores[f"mae_{field_name}"] = got.mae
        keys = [f"accuracy_{name}" for name in truth]
    else:
        by_variant = {f.variant: _structured(f) for f in figures}
        names = sorted({k for per in by_variant.values() for a in per.values() for k in a})
        if len([f for f in figures if _structured(f)]) >= 2:
            for field_name in names:
                shares, chosen = agreement(by_variant, field_name)
                consensus[field_name] = chosen
                for f in figures:
                    f.scores[f"agreement_{field_name}"] = shares.get(f.variant)
        keys = [f"agreement_{name}" for name in consensus]
    for f in figures:
        values = [v for k in keys if (v := f.scores.get(k)) is not None]
        f.quality = statistics.fmean(values) if values else None
    return consensus


def _structured(f: VariantFigures) -> dict[str, dict[str, Any]]:
    return {i: a for i, a in f.answers.items() if isinstance(a, dict)}
