"""`caption report OUT`: one self-contained HTML page about an output folder, for operators.

It reads the folder only (a bucket folder through a copy) and shows the totals, the run
history, distributions of tokens, latency and attempts, errors by kind with an example
each, the estimate against what was billed, a structured job's label counts, and a
sample of captions beside thumbnails of their images. Everything is inline: styles,
charts (SVG, `report/charts.py`) and thumbnails (small JPEGs as data URIs), so the file can be
mailed or archived and opens without a network.

It aggregates with pyarrow compute over the columns it needs, a shard at a time for the
few string columns, never row by row: a million rows take seconds.
"""

from __future__ import annotations

import base64
import io
import os
import random
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import UsageError
from pipeline.io.storage import deliver, is_remote, read_bytes
from pipeline.output.books import read_shard
from pipeline.output.folder import OutputDir
from pipeline.records import PARSED
from pipeline.report.charts import bars, histogram
from pipeline.report.spread import spreads_of
from pipeline.report.status import FolderStatus, read_status

SAMPLE = 24
THUMB_PX = 160
THUMB_MAX_BYTES = 64 << 20  # a sampled image larger than this is not read
THUMB_TIMEOUT_S = 10.0
_SPREAD = ("prompt_tokens", "completion_tokens", "latency_s")  # their spread is drawn


@dataclass
class Figures:
    """What the page shows, computed before any HTML is written (the tests read it)."""

    status: FolderStatus
    runs: list[dict[str, Any]]
    wall_s: float
    latency: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    attempts: list[tuple[str, int]] = field(default_factory=list)
    error_examples: dict[str, str] = field(default_factory=dict)
    labels: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    sample: list[dict[str, Any]] = field(default_factory=list)


def compute(folder: Path, label: str) -> Figures:
    out = OutputDir(folder)
    status = read_status(folder, label)
    meta = out.read_run_json() or {}
    runs = meta.get("runs", [])
    figures = Figures(status, runs, sum(r.get("wall_s") or 0.0 for r in runs))
    shards = out.shards()
    if not shards:
        return figures
    spreads, attempts, ok_rows = spreads_of(shards, _SPREAD)
    for name, spread in spreads.items():
        if not spread.n:
            continue  # near-copies (--dedupe near) have no latency
        figures.histograms[name] = spread.histogram()
        if name == "latency_s":
            p50, p95, p99 = spread.quantiles([0.5, 0.95, 0.99])
            figures.latency = {"p50": p50, "p95": p95, "p99": p99}
    figures.attempts = sorted(
        attempts.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 10**9
    )
    figures.error_examples = _error_examples(shards, set(status.errors_by_kind))
    figures.labels = _label_counts(shards, meta.get("job") or {})
    figures.sample = _sample(shards, ok_rows)
    return figures


def _error_examples(shards: list[Path], kinds: set[str]) -> dict[str, str]:
    """One message per error kind, reading error columns a shard at a time until found."""
    found: dict[str, str] = {}
    for shard in shards:
        if set(found) >= kinds:
            break
        t = read_shard(shard, columns=["status", "error_kind", "error"])
        errors = t.filter(pc.not_equal(t["status"], "ok"))
        for kind, message in zip(
            errors["error_kind"].to_pylist(), errors["error"].to_pylist(), strict=True
        ):
            found.setdefault(kind or "unknown", message or "")
    return found


def _label_counts(shards: list[Path], job: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """Value counts of a structured job's enum and boolean fields (top level)."""
    schema = (job.get("json_schema") or {}).get("schema") or {}
    props = schema.get("properties") or {}
    wanted = [
        name
        for name, sub in props.items()
        if isinstance(sub, dict)
        and ("enum" in sub or sub.get("type") in ("boolean", ["boolean", "null"]))
    ]
    if not wanted or PARSED not in pq.read_schema(shards[0]).names:
        return {}
    parsed = pa.concat_tables([read_shard(s, columns=[PARSED]) for s in shards])[PARSED]
    names = [f.name for f in parsed.type]
    out = {}
    for name in wanted:
        column = pc.struct_field(parsed, [names.index(name)])
        counts = pc.value_counts(column.drop_null()).to_pylist()
        out[name] = sorted(
            (
                (
                    str(c["values"]).lower() if isinstance(c["values"], bool) else str(c["values"]),
                    c["counts"],
                )
                for c in counts
            ),
            key=lambda item: -item[1],
        )
    return out


def _sample(shards: list[Path], ok_rows: int) -> list[dict[str, Any]]:
    """Up to SAMPLE ok rows, chosen at random (seeded: the same folder, the same page)."""
    if not ok_rows:
        return []
    picks = sorted(random.Random(0).sample(range(ok_rows), min(SAMPLE, ok_rows)))
    rows: list[dict[str, Any]] = []
    seen = 0
    for shard in shards:
        t = read_shard(shard, columns=["status"])
        ok_index = pc.indices_nonzero(pc.equal(t["status"], "ok")).to_numpy()
        mine = [p - seen for p in picks if seen <= p < seen + len(ok_index)]
        seen += len(ok_index)
        if mine:
            full = read_shard(shard, columns=["source", "caption", "prompt_tokens", "cost_usd"])
            rows += full.take(pa.array(ok_index[mine])).to_pylist()
    for row in rows:
        row["thumbnail"], row["no_thumbnail"] = thumbnail(row["source"])
    return rows


def thumbnail(source: str) -> tuple[str | None, str | None]:
    """A small JPEG of the image as a data URI, or None and why not. The source is read
    bounded: only a regular file (or object) of at most THUMB_MAX_BYTES, in a thread
    given THUMB_TIMEOUT_S, so a FIFO, a device or a stalled mount never hangs the report."""
    from PIL import Image, ImageOps

    if source.startswith(("http://", "https://")):
        return None, "a URL (not fetched)"
    result: list[bytes | str] = []
    reader = threading.Thread(target=lambda: result.append(_bounded_read(source)), daemon=True)
    reader.start()
    reader.join(THUMB_TIMEOUT_S)
    if not result:
        return None, f"not read within {THUMB_TIMEOUT_S:.0f} s"
    data = result[0]
    if isinstance(data, str):
        return None, data
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (THUMB_PX, THUMB_PX))
            thumb = ImageOps.exif_transpose(im.convert("RGB"))  # upright, as a viewer shows it
            thumb.thumbnail((THUMB_PX, THUMB_PX))
            buf = io.BytesIO()
            thumb.save(buf, "JPEG", quality=75)
    except Exception:  # any image Pillow cannot draw is shown without its thumbnail
        return None, "not a readable image"
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), None


def _bounded_read(source: str) -> bytes | str:
    """The source's bytes, or why they were not read (a reason, as a string)."""
    cap = THUMB_MAX_BYTES
    try:
        if is_remote(source):
            data = read_bytes(source, 0, cap + 1)
        else:
            fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return "not a regular file"
                data = f.read(cap + 1)
    except Exception as exc:
        return f"unreadable ({type(exc).__name__})"
    if len(data) > cap:
        return f"over {cap >> 20} MiB"
    return data


# -- the page ---------------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666} .cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px} table{border-collapse:collapse} td,th{padding:3px 10px;
border-bottom:1px solid #eee;text-align:left;vertical-align:top} th{background:#f6f6f6}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:16px}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:12px} svg{max-width:100%;height:auto}
.item{border:1px solid #eee;border-radius:6px;padding:8px} .item img{max-width:100%;display:block}
.none{color:#999} .err{color:#a00} code{font-size:12px}
"""


def _card(name: str, value: str) -> str:
    return f'<div class="card"><b>{escape(value)}</b>{escape(name)}</div>'


def render(f: Figures) -> str:
    s = f.status
    per_1000 = s.cost_usd / s.done * 1000 if s.done else 0.0
    rate = sum(r.get("new_rows") or 0 for r in f.runs) / f.wall_s if f.wall_s else 0.0
    changed = (f.runs[-1].get("changed") or 0) if f.runs else 0  # files replaced
    cards = "".join(
        [
            _card("rows ok", f"{s.ok:,}"),
            _card("error rows", f"{s.errors:,}"),
            _card("pending", f"{s.pending:,}"),
            _card("current rows", f"{s.done - s.removed:,}"),
            _card("changed in the last run", f"{changed:,}"),
            _card("removed (source gone)", f"{s.removed:,}"),
            _card("prompt tokens", f"{s.prompt_tokens:,}"),
            _card("completion tokens", f"{s.completion_tokens:,}"),
            _card("cost", f"${s.cost_usd:,.4f}"),
            _card("cost per 1,000 images", f"${per_1000:,.4f}"),
            _card("wall time", f"{f.wall_s:,.1f} s"),
            _card("rate", f"{rate:,.1f} rows/s"),
        ]
    )
    parts = [
        f"<h1>caption report: {escape(s.output)}</h1>",
        f'<p class="sub">{escape(str(s.model))} at {escape(str(s.endpoint))}; fingerprint '
        f"<code>{escape(str(s.fingerprint))}</code>; {s.manifest_rows:,} manifest rows; "
        f"made {datetime.now(UTC).isoformat(timespec='seconds')}</p>",
        f'<div class="cards" id="totals">{cards}</div>',
        "<h2>Runs</h2>",
        _runs_table(f.runs),
        "<h2>Distributions (ok rows)</h2>",
        '<div class="grid">',
        *(
            f"<div>{histogram(*f.histograms[name], label=name.replace('_', ' '))}</div>"
            for name in ("prompt_tokens", "completion_tokens", "latency_s")
            if name in f.histograms
        ),
        f"<div>{bars(f.attempts, 'attempts per row')}<p>attempts per row</p></div>",
        "</div>",
        "<p>latency " + ", ".join(f"{k} {v:.2f} s" for k, v in f.latency.items()) + "</p>"
        if f.latency
        else "",
        "<h2>Errors by kind</h2>",
        _errors_table(s.errors_by_kind, f.error_examples),
        "<h2>Estimate against billed</h2>",
        _reconciliation(s.estimate),
    ]
    if f.labels:
        parts.append("<h2>Labels</h2><div class='grid'>")
        parts += [f"<div><p><b>{escape(n)}</b></p>{bars(c, n)}</div>" for n, c in f.labels.items()]
        parts.append("</div>")
    parts.append(f"<h2>Sample of {len(f.sample)} captions</h2><div class='samples'>")
    for row in f.sample:
        img = (
            f'<img alt="" src="{row["thumbnail"]}">'
            if row["thumbnail"]
            else f'<p class="none">(no thumbnail: {escape(row["no_thumbnail"] or "")})</p>'
        )
        parts.append(
            f'<div class="item">{img}<p>{escape(row["caption"] or "")}</p>'
            f'<p class="sub"><code>{escape(row["source"])}</code></p></div>'
        )
    parts.append("</div>")
    body = "\n".join(parts)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{GENERATOR}'
        f"<title>caption report: {escape(s.output)}</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _ended(run: dict[str, Any]) -> str:
    """How a run ended: why it stopped, in its own words, or that it went through."""
    code = run.get("exit_code")
    exit_code = f" (exit {code})" if code is not None else ""
    if not run.get("stopped"):
        return f"ran to the end{exit_code}"
    reason = run.get("stop_reason")
    return f"stopped: {run['stopped']}{exit_code}" + (f": {reason}" if reason else "")


def _runs_table(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return '<p class="none">no runs yet</p>'
    head = (
        "<tr><th>started</th><th>new rows</th><th>ok</th><th>errors</th><th>cost</th>"
        "<th>wall</th><th>how it ended</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{escape(str(r.get('started_at')))}</td><td>{r.get('new_rows', 0):,}</td>"
        f"<td>{r.get('ok', 0):,}</td><td>{r.get('errors', 0):,}</td>"
        f"<td>${r.get('cost_usd') or 0:,.4f}</td><td>{r.get('wall_s') or 0:,.1f} s</td>"
        f'<td class="ended">{escape(_ended(r))}</td></tr>'
        for r in runs
    )
    return f'<table id="runs">{head}{rows}</table>'


def _errors_table(by_kind: dict[str, int], examples: dict[str, str]) -> str:
    if not by_kind:
        return '<p class="none">no error rows</p>'
    rows = "".join(
        f"<tr><td>{escape(kind)}</td><td>{n:,}</td><td class='err'>{escape(examples.get(kind, '')[:300])}</td></tr>"
        for kind, n in sorted(by_kind.items(), key=lambda item: -item[1])
    )
    return f"<table><tr><th>kind</th><th>rows</th><th>example</th></tr>{rows}</table>"


def _reconciliation(est: dict[str, Any] | None) -> str:
    if not est:
        return '<p class="none">no ok rows with a known image size</p>'
    return (
        f"<p>Over {est['rows']:,} ok rows: {est['prompt_tokens_estimated']:,} prompt tokens "
        f"estimated, {est['prompt_tokens_actual']:,} billed "
        f"({est['prompt_tokens_ratio']:.3f}x); input ${est['input_cost_estimated_usd']:.4f} "
        f"estimated, ${est['input_cost_actual_usd']:.4f} billed.</p>"
    )


# Marks a page as a caption report, so that writing over it is writing a report anew.
GENERATOR = '<meta name="generator" content="caption report">'


def is_report(path: Path) -> bool:
    """Whether a local file is an earlier caption report (its first bytes say so)."""
    try:
        with open(path, "rb") as f:
            return GENERATOR.encode() in f.read(4096)
    except OSError:
        return False


def write_report(folder: Path, label: str, target: str, force: bool = False) -> Figures:
    """Compute the figures and write the page: to a local path (its folders made) or a
    bucket object, whole or not at all. A local file that is not an earlier report is
    not written over unless `force`."""
    local = Path(target)
    if not is_remote(target) and local.exists() and not force:
        if local.is_dir():
            raise UsageError(f"-o {target}: is a folder; name the HTML file to write")
        if not is_report(local):
            raise UsageError(
                f"-o {target}: exists and is not an earlier caption report; "
                "name another file, or add --force to write over it"
            )
    figures = compute(folder, label)
    with tempfile.TemporaryDirectory(prefix="caption-report-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(render(figures), encoding="utf-8")
        deliver(page, target)
    return figures
