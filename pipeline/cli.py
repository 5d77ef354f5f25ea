"""The `caption` command line. Heavy libraries are imported inside the commands, so that
`caption --help` stays fast (no pandas, pyarrow or aiohttp at start-up)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from pipeline import __version__
from pipeline.errors import EXIT_USAGE, UsageError

log = logging.getLogger("pipeline")


class _Group(click.Group):
    """Turns the package's `UsageError` into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            click.echo(f"caption: error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pipeline")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="caption")
@click.option("-v", "--verbose", count=True, help="More log output (debug).")
def cli(verbose: int) -> None:
    """Caption image datasets with an OpenAI-compatible vision endpoint: resumable,
    rate-limited, and priced before and after every run."""
    _setup_logging(verbose, quiet=False)


@cli.command(short_help="Read image sources into a Parquet manifest with stable ids.")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Manifest file to write (Parquet).",
)
@click.option(
    "--column",
    help="Column holding the image path or URL in tabular list files "
    "(default: first of image, image_url, url, path, file).",
)
@click.option("--id-column", help="Use this column of the list files as the row id.")
def ingest(
    sources: tuple[str, ...], output: Path, column: str | None, id_column: str | None
) -> None:
    """Read SOURCES (folders, globs, URLs, images, or .txt/.csv/.tsv/.jsonl/.parquet lists)
    into a manifest with columns id, source and any extra columns of the lists."""
    from pipeline.manifest import write_manifest

    summary = write_manifest(list(sources), output, column=column, id_column=id_column)
    click.echo(summary.line())


@cli.command(short_help="Show the price table (USD per 1M tokens).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Job config whose [prices] tables add to or override the shipped table.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def prices(config_path: Path | None, as_json: bool) -> None:
    """Print every model's input and output price per 1M tokens."""
    from pipeline.config import load_config
    from pipeline.prices import load_price_table

    table = load_config(config_path).prices if config_path else load_price_table()
    rows = [
        {"model": p.model, "input_per_1m": p.input_per_1m, "output_per_1m": p.output_per_1m}
        for p in table.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["model"]) for r in rows)
    click.echo(f"{'model':<{width}}  {'input $/1M':>10}  {'output $/1M':>11}")
    for r in rows:
        click.echo(f"{r['model']:<{width}}  {r['input_per_1m']:>10g}  {r['output_per_1m']:>11g}")


def main() -> None:
    cli(prog_name="caption")
