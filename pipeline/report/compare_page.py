"""`CMP/compare.html`: a comparison on one self-contained page (like the report): quality
against cost with the cheaper-and-better frontier marked, the table of variants, and
the sample's images side by side with each variant's answer, disagreements first."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.jobs.measure import VariantFigures
from pipeline.report.charts import scatter
from pipeline.report.page import GENERATOR, STYLE, thumbnail

PAGE_NAME = "compare.html"
SIDE_BY_SIDE = 24  # images shown with every variant's answer


def frontier(figures: list[VariantFigures]) -> set[str]:
    """The variants no other beats on both: as cheap or cheaper and as good or better."""
    scored = [f for f in figures if f.quality is not None and f.ok]
    return {
        f.variant
        for f in scored
        if not any(
            g is not f
            and g.cost_per_1k_usd <= f.cost_per_1k_usd
            and (g.quality or 0) >= (f.quality or 0)
            and (g.cost_per_1k_usd < f.cost_per_1k_usd or (g.quality or 0) > (f.quality or 0))
            for g in scored
        )
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return escape("" if value is None else str(value))


def _answer(value: Any) -> str:
    if value is None:
        return '<span class="none">(no answer)</span>'
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return escape(text[:600])


def render_compare(
    figures: list[VariantFigures], sample: Path, recommendation: str, label: str
) -> str:
    best = frontier(figures)
    points = [
        (f.variant, f.cost_per_1k_usd, f.quality, f.variant in best)
        for f in figures
        if f.quality is not None and f.ok and f.cost_per_1k_usd > 0
    ]
    chart = scatter(points, "$ per 1,000 images", "quality")
    rows = [f.as_row() for f in figures]
    names = list(rows[0]) if rows else []
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r[n])}</td>" for n in names) + "</tr>" for r in rows
    )
    sources = dict(
        zip(*(pq.read_table(sample, columns=["id", "source"]).to_pydict().values()), strict=True)
    )
    images = sorted(sources)

    def differs(image: str) -> bool:
        given = {json.dumps(f.answers.get(image), sort_keys=True) for f in figures}
        return len(given) > 1

    shown = sorted(images, key=lambda i: (not differs(i), i))[:SIDE_BY_SIDE]
    cells = []
    for image in shown:
        uri, why = thumbnail(sources[image])
        img = f'<img alt="" src="{uri}">' if uri else f'<p class="none">({escape(why or "")})</p>'
        answers = "".join(
            f"<p><b>{escape(f.variant)}</b>: {_answer(f.answers.get(image))}</p>" for f in figures
        )
        mark = ' <span class="err">variants disagree</span>' if differs(image) else ""
        cells.append(
            f'<div class="item">{img}<p class="sub"><code>{escape(sources[image])}</code>{mark}'
            f"</p>{answers}</div>"
        )
    parts = [
        f"<h1>caption compare: {escape(label)}</h1>",
        f'<p class="sub">{len(figures)} variants on a sample of {len(images)} images; made '
        f"{datetime.now(UTC).isoformat(timespec='seconds')}</p>",
        f'<p id="recommendation"><b>{escape(recommendation)}</b></p>',
        "<h2>Quality against cost</h2>",
        chart,
        '<p class="sub">red: the frontier, variants no other beats on both price and quality</p>',
        "<h2>Variants</h2>",
        f'<div style="overflow-x:auto"><table id="variants"><tr>{head}</tr>{body}</table></div>',
        f"<h2>Side by side ({len(shown)} images, disagreements first)</h2>",
        f"<div class='samples'>{''.join(cells)}</div>",
    ]
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{GENERATOR}'
        f"<title>caption compare: {escape(label)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>"
    )


def write_compare_page(
    folder: Path, figures: list[VariantFigures], sample: Path, recommendation: str
) -> Path:
    target = folder / PAGE_NAME
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(render_compare(figures, sample, recommendation, str(folder)))
    tmp.replace(target)
    return target
