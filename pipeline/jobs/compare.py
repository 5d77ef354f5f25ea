"""`caption compare`: which model and prompt to run, by quality per dollar, on a sample.

Every combination of model and prompt is a variant, run as an ordinary output folder
under the comparison's folder (`CMP/<variant>/`) over the same seeded sample
(`jobs/sample.py`): resumable, exactly once, with the run's limits and retries, and one
budget cap for all variants together. A rerun sends nothing new; a new variant runs alone.
Each variant is then measured (`jobs/measure.py`) and scored against truth or against the
other variants' consensus (`quality/scores.py`); `CMP/compare.parquet` holds one row per
variant, and the summary recommends the cheapest variant within a margin of the best.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config.settings import JobConfig
from pipeline.cost.estimate import estimate
from pipeline.errors import EXIT_BUDGET, EXIT_OK, EXIT_ROW_ERRORS, UsageError
from pipeline.io.storage import is_remote
from pipeline.jobs.judge import judge_folder, run_judge, win_rates
from pipeline.jobs.measure import VariantFigures, measure_variant, score_variants
from pipeline.jobs.run import run_job
from pipeline.jobs.sample import draw_sample
from pipeline.output import books
from pipeline.output.folder import OutputDir
from pipeline.output.layout import TMP_SUFFIX
from pipeline.output.writer import write_parquet_atomic
from pipeline.sources.ids import PATH_IDS, RowSpec

TABLE_NAME = "compare.parquet"
CONSENSUS_NAME = "consensus.parquet"  # without truth: each image's majority answer
DEFAULT_MARGIN = 0.02  # two points of quality


@dataclass(frozen=True, slots=True)
class CompareSpec:
    sources: list[str]
    output: Path
    sample: int
    models: list[str] = field(default_factory=list)  # default: the job's model
    prompts: list[tuple[str, str]] = field(default_factory=list)  # (name, text); the job's
    truth: dict[str, str] = field(default_factory=dict)  # structured field -> column
    seed: int = 0
    margin: float = DEFAULT_MARGIN
    judge: str | None = None  # a model that judges free-text captions pairwise
    spec: RowSpec = PATH_IDS


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    config: JobConfig
    prompt_name: str
    folder: Path


@dataclass(slots=True)
class CompareOutcome:
    exit_code: int
    table: list[VariantFigures]
    recommendation: str
    message: str | None = None  # one line when the comparison stopped early


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def variants(spec: CompareSpec, config: JobConfig) -> list[Variant]:
    """Every model with every prompt, named for both (`gpt-gpt-4o`, `...--short`)."""
    models = spec.models or [config.request.model]
    prompts = spec.prompts or [("", config.request.prompt)]
    if len(set(models)) != len(models):
        raise UsageError("--model: each model once")
    out = []
    for model in models:
        for prompt_name, prompt in prompts:
            request = replace(config.request, model=model, prompt=prompt)
            variant = replace(config, request=request)  # checked: price, family, prompt
            name = _slug(variant.request.model) + (f"--{_slug(prompt_name)}" if prompt_name else "")
            out.append(Variant(name, variant, prompt_name, spec.output / name))
    if len({v.name for v in out}) != len(out):
        raise UsageError("--prompt-file: two prompt files of the same name; rename one")
    return out


def run_compare(
    spec: CompareSpec,
    config: JobConfig,
    *,
    api_key: str | None = None,
    show_progress: bool = False,
    handle_signals: bool = True,
) -> CompareOutcome:
    if is_remote(str(spec.output)):
        raise UsageError(f"{spec.output}: a comparison's folder is local (its variants are)")
    chosen = variants(spec, config)
    sample, full, source_images = draw_sample(
        spec.sources, spec.output, spec.sample, spec.seed, spec.spec
    )
    cap = config.limits.max_cost_usd
    judged = judge_folder(spec.output, spec.judge) if spec.judge else None
    message = None
    exit_code = EXIT_OK
    for variant in chosen:
        others = sum(_spent(v.folder) for v in chosen if v is not variant)
        others += _spent(judged) if judged else 0.0
        limits = variant.config.limits
        if cap is not None:
            if cap - others <= 0:
                exit_code, message = EXIT_BUDGET, _over(cap, others, variant.name)
                break
            limits = replace(limits, max_cost_usd=cap - others)
        outcome = run_job(
            [str(sample)],
            variant.folder,
            replace(variant.config, limits=limits),
            api_key=api_key,
            show_progress=show_progress,
            handle_signals=handle_signals,
        )
        if outcome.exit_code not in (EXIT_OK, EXIT_ROW_ERRORS):
            exit_code = outcome.exit_code
            message = f"variant {variant.name}: {outcome.message or outcome.summary}"
            break
        if outcome.exit_code == EXIT_ROW_ERRORS:
            exit_code = EXIT_ROW_ERRORS
    ran = [v for v in chosen if (v.folder / ".caption" / "run.json").exists()]
    figures = [
        measure_variant(v.name, v.config, v.prompt_name, v.folder, sample, full, source_images)
        for v in ran
    ]
    consensus = score_variants(figures, sample, spec.truth)
    if spec.judge and exit_code in (EXIT_OK, EXIT_ROW_ERRORS):
        judged_code, judged_message = _judge(
            spec, config, figures, sample, chosen, api_key, show_progress, handle_signals
        )
        if judged_code != EXIT_OK:
            exit_code, message = judged_code, judged_message

    write_table(spec.output / TABLE_NAME, [f.as_row() for f in figures])
    write_table(
        spec.output / CONSENSUS_NAME,
        [
            {"id": image, "field": name, "value": json.dumps(value, sort_keys=True)}
            for name, majority in sorted(consensus.items())
            for image, value in sorted(majority.items())
        ],
    )
    return CompareOutcome(exit_code, figures, recommend(figures, spec.margin), message)


def _judge(
    spec: CompareSpec,
    config: JobConfig,
    figures: list[VariantFigures],
    sample: Path,
    chosen: list[Variant],
    api_key: str | None,
    show_progress: bool,
    handle_signals: bool,
) -> tuple[int, str | None]:
    """Judge the captions pairwise, within what the budget leaves; each variant's win
    rate (and, without truth, its quality)."""
    assert spec.judge is not None
    limits = config.limits
    if limits.max_cost_usd is not None:
        spent = sum(_spent(v.folder) for v in chosen)
        if limits.max_cost_usd - spent <= 0:
            return EXIT_BUDGET, _over(limits.max_cost_usd, spent, "the judge")
        limits = replace(limits, max_cost_usd=limits.max_cost_usd - spent)
    outcome = run_judge(
        spec.judge,
        figures,
        sample,
        spec.output,
        replace(config, limits=limits),
        api_key=api_key,
        show_progress=show_progress,
        handle_signals=handle_signals,
    )
    rates = win_rates(spec.output, spec.judge)
    for f in figures:
        rate = rates.get(f.variant)
        if rate is None:
            continue
        f.scores.update(
            judge_win_rate=rate[0], judge_win_rate_low=rate[1], judge_win_rate_high=rate[2]
        )
        f.scores["judge_judgments"] = float(rate[3])
        if not spec.truth:
            f.quality = rate[0]
    if outcome is not None and outcome.exit_code not in (EXIT_OK, EXIT_ROW_ERRORS):
        return outcome.exit_code, f"the judge: {outcome.message or outcome.summary}"
    return EXIT_OK, None


def _spent(folder: Path) -> float:
    out = OutputDir(folder)
    return books.scan(out).cost_usd if out.run_json.exists() else 0.0


def _over(cap: float, spent: float, name: str) -> str:
    return (
        f"stopped before variant {name}: the variants have spent ${spent:.4f} of the "
        f"${cap:.4f} cap; raise --max-cost and rerun the same command to go on"
    )


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as a Parquet file, whole or not at all."""
    table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})
    write_parquet_atomic(table, path, tmp=path.with_name(path.name + TMP_SUFFIX))


def recommend(figures: list[VariantFigures], margin: float) -> str:
    """The cheapest variant whose quality is within `margin` of the best, with its
    projected cost for the whole source; or the cheapest, saying why quality is unknown."""
    scored = [f for f in figures if f.quality is not None and f.ok]
    if not scored:
        ok = [f for f in figures if f.ok]
        if not ok:
            return "no variant answered: nothing to recommend"
        cheapest = min(ok, key=lambda f: f.projected_cost_usd)
        return (
            "no measure of quality (no --truth, no structured fields two variants answered, "
            "no --judge): "
            f"the cheapest is {cheapest.variant}, {_projected(cheapest)}"
        )
    best = max(f.quality for f in scored if f.quality is not None)
    adequate = [f for f in scored if f.quality is not None and f.quality >= best - margin]
    pick = min(adequate, key=lambda f: (f.projected_cost_usd, -(f.quality or 0.0)))
    return (
        f"recommended: {pick.variant} ({pick.model}), quality {pick.quality:.3f} against the "
        f"best {best:.3f} (within {margin * 100:g} points), {_projected(pick)}"
    )


def _projected(f: VariantFigures) -> str:
    return (
        f"${f.cost_per_1k_usd:.4f} per 1,000 images as billed, about "
        f"${f.projected_cost_usd:,.2f} for all {f.source_images:,} images of the source"
    )


def estimate_compare(spec: CompareSpec, config: JobConfig) -> list[dict[str, Any]]:
    """Before anything is sent: each variant's sample cost and the whole source's (the
    expected output length unknown yet: its worst case, n x max_tokens)."""
    chosen = variants(spec, config)
    sample, full, source_images = draw_sample(
        spec.sources, spec.output, spec.sample, spec.seed, spec.spec
    )
    rows = []
    for v in chosen:
        model = v.config.request.model
        on_sample = estimate(pq.ParquetFile(sample).iter_batches(), v.config, [model])
        whole = estimate(pq.ParquetFile(full).iter_batches(), v.config, [model])
        rows.append(
            {
                "variant": v.name,
                "model": model,
                "sample_images": on_sample.models[0].images,
                "sample_cost_max_usd": on_sample.models[0].cost_max_usd,
                "source_images": source_images,
                "projected_cost_max_usd": whole.models[0].cost_max_usd,
                "image_tokens_exact": whole.models[0].image_tokens_exact,
            }
        )
    return rows
