"""The `caption` commands that read, show or serve rather than run a job: `prices`,
`status`, `export`, `report` and `fake-endpoint` (the group and the job commands are in
`cli/group.py`). Heavy libraries are imported inside the commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from pipeline.errors import UsageError


@click.command(short_help="Show the price table (USD per 1M tokens).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Job config whose [prices] tables add to or override the shipped table.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def prices(config_path: Path | None, as_json: bool) -> None:
    """Print every model's input and output price per 1M tokens, family by family, with
    the page each family's prices come from."""
    from pipeline.config.loading import load_config
    from pipeline.config.prices import FAMILIES, family_of, load_price_table

    table = load_config(config_path).prices if config_path else load_price_table()
    rows = [price_entry_row(p) for p in table.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["model"]) for r in rows)
    families = [*FAMILIES, None]  # None: names of no family (custom [prices] tables)
    for family in families:
        listed = [r for r in rows if family_of(r["model"]) == family]
        if not listed:
            continue
        page = table.pages.get(family or "", "")
        click.echo(f"{family or 'other'}:" + (f" prices from {page}" if page else ""))
        click.echo(
            f"  {'model':<{width}}  {'input $/1M':>10}  {'cached $/1M':>11}  "
            f"{'output $/1M':>11}  image rule"
        )
        for r in listed:
            cached = "" if r["cached_input_per_1m"] is None else f"{r['cached_input_per_1m']:g}"
            click.echo(
                f"  {r['model']:<{width}}  {r['input_per_1m']:>10g}  {cached:>11}  "
                f"{r['output_per_1m']:>11g}  {r['rule']}"
            )
            for tier in r["tiers"]:
                click.echo(
                    f"  {'':<{width}}  {tier['input_per_1m']:>10g}  {'':>11}  "
                    f"{tier['output_per_1m']:>11g}  when the prompt is over "
                    f"{tier['above']:,} tokens"
                )
        click.echo("")


def price_entry_row(price: Any) -> dict[str, Any]:
    """A price as `caption prices` shows it: per-1M prices, tiers and the image rule."""
    from pipeline.config.imagerules import describe_rule
    from pipeline.config.prices import price_entry

    entry = price_entry(price)
    return {
        "model": price.model,
        "input_per_1m": price.input_per_1m,
        "cached_input_per_1m": entry.get("cached_input_per_1m"),
        "output_per_1m": price.output_per_1m,
        "tiers": entry.get("tiers", []),
        "image": entry.get("image"),
        "image_tokens_exact": price.image.exact if price.image is not None else None,
        "rule": describe_rule(price.image),
    }


@click.command(short_help="Show what an output folder holds: done, errors, pending, cost.")
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(output: str, as_json: bool) -> None:
    """Report rows done (ok, errors by kind), pending against the manifest, tokens, cost and
    the job fingerprint of OUTPUT (a folder, or s3:// or gs://). Reads only the output
    folder; changes nothing."""
    from pipeline.output.mirror import readable
    from pipeline.report.status import read_status

    with readable(output) as folder:
        report = read_status(folder, label=output)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo("\n".join(report.lines()))


@click.command(short_help="Write the results as one file, with the sources' own columns.")
@click.argument("output_dir")
@click.option(
    "-o",
    "--output",
    "target",
    required=True,
    help="File to write: .parquet, .jsonl or .csv; a local path or s3:// / gs://.",
)
@click.option(
    "--include-removed",
    is_flag=True,
    help="Keep the rows whose source left the manifest (their own columns empty).",
)
def export(output_dir: str, target: str, include_removed: bool) -> None:
    """Join the results in OUTPUT_DIR with the manifest's own columns (your labels,
    splits, ids) into one file, one row per answered image. Nested columns such as
    `choices` become JSON text in a CSV. Rows whose source the last run's sources no
    longer hold are left out (--include-removed keeps them). Reads the folder only."""
    from pipeline.io.storage import check_scheme
    from pipeline.output.export import export as write
    from pipeline.output.mirror import readable

    check_scheme(target)
    with readable(output_dir) as folder:
        rows = write(folder, target, include_removed)
    click.echo(f"exported {rows} rows to {target}")


@click.command(short_help="Write an HTML report of an output folder, for operators.")
@click.argument("output")
@click.option(
    "-o",
    "--output",
    "target",
    default="report.html",
    show_default=True,
    help="The HTML file to write: a local path (its folders are made) or s3:// / gs://.",
)
@click.option(
    "--force", is_flag=True, help="Write over a file that is not an earlier caption report."
)
def report(output: str, target: str, force: bool) -> None:
    """One self-contained HTML page about OUTPUT (a folder, or s3:// or gs://): totals,
    runs, token and latency distributions, errors by kind, the estimate against what was
    billed, label counts of a structured job, and a sample of captions with thumbnails.
    Reads the folder only."""
    from pipeline.io.storage import check_scheme
    from pipeline.output.mirror import readable
    from pipeline.report.page import write_report

    check_scheme(target)
    with readable(output) as folder:
        write_report(folder, output, target, force)
    click.echo(f"wrote {target}")


def _wrong_rates(given: tuple[str, ...]) -> dict[str, float]:
    rates = {}
    for item in given:
        model, _, rate = item.rpartition("=")
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if not model or not 0 <= value <= 1:
            raise click.BadParameter(
                f"{item!r}: must be MODEL=RATE, a rate from 0 to 1", param_hint="--wrong-rate"
            )
        rates[model] = value
    return rates


@click.command("fake-endpoint", short_help="Serve a fake OpenAI-compatible endpoint on loopback.")
@click.option("--port", type=int, default=8099, show_default=True)
@click.option(
    "--latency", type=float, default=0.0, show_default=True, help="Seconds added to every answer."
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of requests answered 500 or 429.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--rate-limit",
    type=click.IntRange(min=1),
    help="Allow at most this many requests per sliding second; answer 429 past it, with "
    "x-ratelimit-* headers (per minute, as OpenAI sends them).",
)
@click.option(
    "--rate-limit-form",
    type=click.Choice(["openai", "memories"]),
    default="openai",
    show_default=True,
    help="openai: HTTP 429; memories: HTTP 200 with memories.ai's code 0429 envelope.",
)
@click.option(
    "--flaky-429",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of requests refused with a one-off 429 (Retry-After: 1, no real cap).",
)
@click.option(
    "--uplink-mbps",
    type=click.FloatRange(min=0.001),
    help="One shared bandwidth cap, in Mbit/s, on the request bodies it reads (a slow "
    "upload link).",
)
@click.option(
    "--wrong-rate",
    multiple=True,
    metavar="MODEL=RATE",
    help="A quality knob for `caption compare`: MODEL answers this share of images "
    "wrongly (a structured job's first field; a caption marked as wrong, which the fake "
    "as a judge prefers the other to). Repeat per model.",
)
def fake_endpoint(
    port: int,
    latency: float,
    error_rate: float,
    seed: int,
    rate_limit: int | None,
    rate_limit_form: str,
    flaky_429: float,
    uplink_mbps: float | None,
    wrong_rate: tuple[str, ...],
) -> None:
    """Serve /chat/completions on 127.0.0.1 with deterministic captions and realistic
    usage, for trying jobs without a real key: it accepts any key
    (MEMORIES_API_KEY=any caption run ... --endpoint URL)."""
    from aiohttp import web

    from pipeline.testing.fake_server import FakeOptions, make_app

    url = f"http://127.0.0.1:{port}/chat/completions"
    options = FakeOptions(
        latency=latency,
        error_rate=error_rate,
        seed=seed,
        rate_limit=rate_limit,
        rate_limit_form=rate_limit_form,
        flaky_429=flaky_429,
        uplink_mbps=uplink_mbps,
        wrong_rates=_wrong_rates(wrong_rate),
    )

    def started(_message: str) -> None:
        click.echo(
            f"fake endpoint: {url} (it accepts any key); try:\n"
            f"  MEMORIES_API_KEY=any caption run data/samples -o out/try --endpoint {url}",
            err=True,
        )

    try:
        web.run_app(make_app(options), host="127.0.0.1", port=port, print=started, access_log=None)
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise UsageError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({reason})") from None
