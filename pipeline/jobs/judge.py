"""A comparison's judge, for free-text captions: a model shown the image and two variants'
captions says which describes it better, or that they tie. Every pair of variants is
asked about every image twice, the captions' order swapped, so a judge's preference for
the first (or second) place cancels out.

The judgments are an ordinary run into `CMP/judge-<model>/` over a manifest of one row
per (image, pair, order), each with its own prompt (`records.ROW_PROMPT`): exactly once,
resumable, the run's limits and retries, and the comparison's one budget. A variant's win
rate counts a win 1, a tie 1/2 and a loss 0 over its judgments, with a 95% interval.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config.settings import JobConfig
from pipeline.io.arrow import read_parquet
from pipeline.jobs.measure import VariantFigures
from pipeline.jobs.run import RunOutcome, run_job
from pipeline.output.folder import OutputDir
from pipeline.output.layout import TMP_SUFFIX
from pipeline.output.writer import write_parquet_atomic
from pipeline.records import MANIFEST_ID, MANIFEST_SOURCE, ROW_PROMPT

JUDGE_PROMPT = (
    "Two captions of this image follow. Which one describes the image better: accurate, "
    "complete, and inventing nothing? Answer A, B, or tie if neither is better.\n\n"
    "Caption A: {a}\n\nCaption B: {b}"
)
JUDGE_SCHEMA = {
    "name": "judgment",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}},
        "required": ["winner"],
        "additionalProperties": False,
    },
}
MANIFEST_NAME = "judge.pq"


def judge_folder(output: Path, model: str) -> Path:
    return output / ("judge-" + "".join(c if c.isalnum() or c in ".-" else "-" for c in model))


def judgments(figures: list[VariantFigures], sources: dict[str, str]) -> list[dict[str, Any]]:
    """One row per (image, pair of variants, order): the image, and the prompt that
    shows the two captions in that order."""
    rows = []
    for a, b in itertools.combinations(sorted(figures, key=lambda f: f.variant), 2):
        for image in sorted(set(a.answers) & set(b.answers)):
            first, second = a.answers[image], b.answers[image]
            if not (isinstance(first, str) and isinstance(second, str)):
                continue
            for order, (shown_a, shown_b) in enumerate(((a, b), (b, a))):
                key = f"{image}|{a.variant}|{b.variant}|{order}"
                rows.append(
                    {
                        MANIFEST_ID: hashlib.sha256(key.encode()).hexdigest()[:16],
                        MANIFEST_SOURCE: sources[image],
                        "image_id": image,
                        "shown_a": shown_a.variant,
                        "shown_b": shown_b.variant,
                        ROW_PROMPT: JUDGE_PROMPT.format(
                            a=shown_a.answers[image], b=shown_b.answers[image]
                        ),
                    }
                )
    return rows


def run_judge(
    model: str,
    figures: list[VariantFigures],
    sample: Path,
    output: Path,
    config: JobConfig,
    *,
    api_key: str | None,
    show_progress: bool,
    handle_signals: bool,
) -> RunOutcome | None:
    """Ask the judge about every pair; None when there is nothing to judge (fewer than
    two variants with captions)."""
    table = pq.read_table(sample, columns=[MANIFEST_ID, MANIFEST_SOURCE]).to_pydict()
    sources = dict(zip(table[MANIFEST_ID], table[MANIFEST_SOURCE], strict=True))
    rows = judgments(figures, sources)
    if not rows:
        return None
    folder = judge_folder(output, model)
    manifest = output / ".caption" / MANIFEST_NAME
    manifest.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(
        pa.Table.from_pylist(rows), manifest, tmp=manifest.with_name(manifest.name + TMP_SUFFIX)
    )
    request = replace(
        config.request,
        model=model,
        prompt="Which caption describes the image better?",  # each row has its own
        response_format=None,
        json_schema=JUDGE_SCHEMA,
        max_tokens=64,
    )
    return run_job(
        [str(manifest)],
        folder,
        replace(config, request=request),
        api_key=api_key,
        show_progress=show_progress,
        handle_signals=handle_signals,
    )


def win_rates(output: Path, model: str) -> dict[str, tuple[float, float, float, int]]:
    """Variant -> (win rate, 95% low, 95% high, judgments), from the judge's answers."""
    out = OutputDir(judge_folder(output, model))
    manifest = output / ".caption" / MANIFEST_NAME
    if not out.exists() or not manifest.exists():
        return {}
    asked = {r[MANIFEST_ID]: r for r in pq.read_table(manifest).to_pylist()}
    scores: dict[str, list[float]] = {}
    for shard in out.shards():
        for row in read_parquet(shard, columns=["id", "status", "parsed"]).to_pylist():
            winner = (row["parsed"] or {}).get("winner") if row["status"] == "ok" else None
            judged = asked.get(row["id"])
            if judged is None or winner not in ("A", "B", "tie"):
                continue
            a_score = {"A": 1.0, "B": 0.0, "tie": 0.5}[winner]
            scores.setdefault(judged["shown_a"], []).append(a_score)
            scores.setdefault(judged["shown_b"], []).append(1.0 - a_score)
    rates = {}
    for variant, got in scores.items():
        mean = statistics.fmean(got)
        spread = 1.96 * math.sqrt(statistics.pvariance(got) / len(got)) if len(got) > 1 else 0.5
        rates[variant] = (mean, max(0.0, mean - spread), min(1.0, mean + spread), len(got))
    return rates
