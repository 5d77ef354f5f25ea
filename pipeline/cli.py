"""The `caption` command line. Heavy libraries are imported inside the commands, so that
`caption --help` stays fast (no pandas, pyarrow or aiohttp at start-up)."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from pipeline import __version__
from pipeline.errors import (
    EXIT_FATAL_API,
    EXIT_INTERRUPTED,
    EXIT_STORAGE,
    EXIT_USAGE,
    FatalApiError,
    StorageError,
    UsageError,
)
from pipeline.ids import ID_FROM, RowSpec

log = logging.getLogger("pipeline")


class _Group(click.Group):
    """Turns `UsageError` (exit 2), `FatalApiError` (exit 3) and `StorageError` (exit 5)
    into one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            click.echo(f"caption: error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except StorageError as exc:
            click.echo(f"caption: error: {exc}; what was written before is intact", err=True)
            ctx.exit(EXIT_STORAGE)
        except FatalApiError as exc:
            click.echo(f"caption: the endpoint refused the job: {exc}", err=True)
            ctx.exit(EXIT_FATAL_API)
        except KeyboardInterrupt:
            # Outside the run's own handler (during ingest, say): nothing half-written is
            # kept, since every file is written under a temporary name first.
            click.echo("caption: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def _setup_logging(verbose: int, quiet: bool) -> None:
    """Warnings only by default (the bar and the summary say the rest); -v adds what the
    run does on the way (recovery, compaction, ingest), -vv debug detail."""
    level = (
        logging.WARNING
        if quiet or not verbose
        else (logging.INFO if verbose == 1 else logging.DEBUG)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pipeline")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="caption")
@click.option("-v", "--verbose", count=True, help="More log output: -v what a run does, -vv debug.")
@click.option(
    "--storage-options",
    metavar="JSON",
    help="Options for s3:// and gs:// filesystems (s3fs, gcsfs), e.g. "
    '\'{"profile": "labels"}\'; credentials otherwise come from the standard chain.',
)
def cli(verbose: int, storage_options: str | None) -> None:
    """Caption image datasets with an OpenAI-compatible vision endpoint: resumable,
    rate-limited, and priced before and after every run."""
    _setup_logging(verbose, quiet=False)
    if storage_options:
        from pipeline.storage import configure

        try:
            options = json.loads(storage_options)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON ({exc})", param_hint="--storage-options") from None
        if not isinstance(options, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--storage-options")
        configure(options)


def _row_options(fn: Any) -> Any:
    """--column, --id-column and --id-from, handed to the command as one `spec: RowSpec`."""

    @functools.wraps(fn)
    def command(
        *args: Any, column: str | None, id_column: str | None, id_from: str, **kwargs: Any
    ) -> Any:
        return fn(*args, spec=RowSpec(column, id_column, id_from), **kwargs)

    options = [
        click.option(
            "--column",
            help="Column holding the image path or URL in tabular list files "
            "(default: first of image, image_url, url, path, file).",
        ),
        click.option("--id-column", help="Use this column of the list files as the row id."),
        click.option(
            "--id-from",
            type=click.Choice(ID_FROM),
            default="path",
            show_default=True,
            help="Hash ids from each file's real path, or from its bytes (identical images "
            "are then sent once, and ids survive moving the files).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command(short_help="Read image sources into a Parquet manifest with stable ids.")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    help="Manifest file to write (Parquet; a local path, or s3:// or gs://).",
)
@_row_options
def ingest(sources: tuple[str, ...], output: str, spec: RowSpec) -> None:
    """Read SOURCES (folders, globs, URLs, images, or .txt/.csv/.tsv/.jsonl/.parquet lists)
    into a manifest with columns id, source and any extra columns of the lists."""
    from pipeline.manifest import write_manifest
    from pipeline.storage import check_scheme, is_remote

    check_scheme(output)
    summary = write_manifest(list(sources), output if is_remote(output) else Path(output), spec)
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
    rows = [price_entry_row(p) for p in table.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["model"]) for r in rows)
    click.echo(
        f"{'model':<{width}}  {'input $/1M':>10}  {'cached $/1M':>11}  {'output $/1M':>11}  image rule"
    )
    for r in rows:
        cached = "" if r["cached_input_per_1m"] is None else f"{r['cached_input_per_1m']:g}"
        click.echo(
            f"{r['model']:<{width}}  {r['input_per_1m']:>10g}  {cached:>11}  "
            f"{r['output_per_1m']:>11g}  {describe_rule(r['image'])}"
        )


def price_entry_row(price: Any) -> dict[str, Any]:
    """A price as `caption prices` shows it: per-1M prices and the image rule."""
    from pipeline.prices import price_entry

    entry = price_entry(price)
    return {
        "model": price.model,
        "input_per_1m": price.input_per_1m,
        "cached_input_per_1m": entry.get("cached_input_per_1m"),
        "output_per_1m": price.output_per_1m,
        "image": entry.get("image"),
    }


def describe_rule(rule: dict[str, Any] | None) -> str:
    if rule is None:
        return "none (images not counted)"
    if rule.get("rule") == "tile":
        return f"tile: {rule['base']} + {rule['per_tile']} per 512-px tile"
    return f"patch: 32-px patches x {rule['multiplier']:g}, at most {rule['budget']}"


def _job_options(*, for_estimate: bool = False) -> Any:
    """Flags that override the job config: flag > file > default. An estimate sends
    nothing unless asked for a pilot, so the flags that only shape sending say so."""
    pilot = " (--pilot only)" if for_estimate else ""
    if for_estimate:
        model = click.option(
            "--model",
            "models",
            multiple=True,
            help="Model to price; repeat to compare models side by side (default: the job's).",
        )
    else:
        model = click.option("--model", help="Model, e.g. gpt:gpt-4o ([request] model).")
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Job config (TOML); see configs/default.toml.",
        ),
        model,
        click.option("--prompt", help="Prompt sent with every image."),
        click.option("--system-prompt", help="System message ('' for none)."),
        click.option(
            "--detail", type=click.Choice(["auto", "low", "high"]), help="Image detail level."
        ),
        click.option("--max-tokens", type=int, help="Most tokens generated per choice."),
        click.option(
            "--resize",
            metavar="off|model|PX",
            help="Send images as the model sees them: 'model' reduces each to the size "
            "it is billed at (same tokens, far fewer bytes); PX caps the longest side.",
        ),
        click.option(
            "--fetch-urls",
            is_flag=True,
            default=None,
            help="Download http(s) images so that --resize applies to them too.",
        ),
        click.option(
            "--schema",
            type=click.Path(dir_okay=False, path_type=Path),
            help="JSON Schema file for structured labels: answers are checked and parsed "
            "into a typed `parsed` column ([request] json_schema).",
        ),
        click.option("--endpoint", help=f"Endpoint URL, or 'fake' for the built-in fake{pilot}."),
        click.option("--api-key-env", help=f"Environment variable holding the API key{pilot}."),
        click.option(
            "--auth-scheme",
            type=click.Choice(["raw", "bearer"]),
            help=f"raw: Authorization: <key> (memories.ai); bearer: Bearer <key>{pilot}.",
        ),
        click.option("--temperature", type=float, help=f"Sampling temperature, 0 to 2{pilot}."),
        click.option(
            "--concurrency",
            type=int,
            help="Requests in flight at once"
            + (" (--pilot, and --probe-urls' reads)." if for_estimate else "."),
        ),
        click.option("--timeout", type=float, help=f"Seconds per request{pilot}."),
    ]
    if not for_estimate:
        options += [
            click.option("--rpm", type=int, help="Requests-per-minute cap."),
            click.option("--tpm", type=int, help="Tokens-per-minute cap."),
            click.option("--max-attempts", type=int, help="Tries per row for transient failures."),
            click.option(
                "--max-cost",
                type=float,
                help="Budget cap in USD for the output folder's total spend.",
            ),
            click.option("--rows-per-shard", type=int, help="Result rows per Parquet shard."),
        ]

    def decorate(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _load_job(config_path: Path | None, flags: dict[str, Any]) -> Any:
    from pipeline.config import FLAG_SETTINGS, load_config

    overrides = {k: v for k, v in flags.items() if k in FLAG_SETTINGS}
    return load_config(config_path, overrides)


def _executor(kind: str, address: str | None, workers: int | None, shared_fs: bool) -> Any:
    from pipeline.executors import ExecutorSpec

    if kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError(
                "--executor ray needs Ray, which is not installed; install the extra: "
                "pip install 'caption[ray]'"
            ) from None
    elif address or workers or shared_fs:
        raise UsageError("--ray-address, --workers and --shared-fs go with --executor ray")
    return ExecutorSpec(kind, address, workers, shared_fs)


def _print_estimate(report: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo("\n".join(report.lines()))


@cli.command(short_help="Caption images: resumable, rate-limited, priced per row.")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    help="Output folder (a local path, or s3:// or gs://): manifest, run.json and shards.",
)
@_job_options()
@_row_options
@click.option("--retry-errors", is_flag=True, help="Send the rows that ended as errors again.")
@click.option(
    "--accept-new-source",
    is_flag=True,
    help="Add rows to a folder whose results share no id with SOURCES (refused by default: "
    "usually another dataset, or the same files named another way).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the job runs: this process, or a Ray cluster (pip install 'caption[ray]').",
)
@click.option("--ray-address", help="The Ray cluster to join (default: start a local one).")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Ray tasks at once (default: the cluster's CPUs)."
)
@click.option(
    "--shared-fs",
    is_flag=True,
    help="With a remote --ray-address: local paths are on a filesystem every node mounts.",
)
@click.option("--dry-run", is_flag=True, help="Estimate the cost and check the job; send nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, warnings only.")
def run(
    sources: tuple[str, ...],
    output: str,
    config_path: Path | None,
    retry_errors: bool,
    accept_new_source: bool,
    executor: str,
    ray_address: str | None,
    workers: int | None,
    shared_fs: bool,
    dry_run: bool,
    spec: RowSpec,
    quiet: bool,
    **flags: Any,
) -> None:
    """Caption every image of SOURCES (anything `ingest` accepts, or a manifest) into
    OUTPUT. Rerunning the same command resumes: only rows without a result are sent.

    Exit codes: 0 all ok; 1 the folder holds error rows; 2 usage or config error; 3 the
    endpoint refused the job (key, balance, quota, a redirect); 4 budget cap reached; 5 the
    output folder cannot be written (no space left, read-only); 130 interrupted.
    With --dry-run: 0 ready to run; 1 some rows would be error rows; 2 not ready.
    """
    if quiet:
        _setup_logging(0, quiet=True)
    config = _load_job(config_path, flags)
    if dry_run:
        from pipeline.dryrun import dry_run as check
        from pipeline.mirror import readable

        with readable(output, must_exist=False) as folder:
            report, problems, exit_code = check(list(sources), folder, config, spec)
        _print_estimate(report, as_json=False)
        for problem in problems:
            click.echo(f"caption: dry run: {problem}", err=True)
        if exit_code == 0:
            click.echo(
                "ready: the config, the key, the output folder and every local file check "
                "out; nothing was sent"
            )
        sys.exit(exit_code)

    from pipeline.runner import run_job

    outcome = run_job(
        list(sources),
        output,
        config,
        retry_errors=retry_errors,
        show_progress=not quiet and sys.stderr.isatty(),
        spec=spec,
        accept_new_source=accept_new_source,
        executor=_executor(executor, ray_address, workers, shared_fs),
    )
    click.echo(outcome.summary)
    if outcome.message:
        click.echo(f"caption: {outcome.message}", err=True)
    sys.exit(outcome.exit_code)


@cli.command(short_help="Estimate tokens and cost per model, before anything is sent.")
@click.argument("sources", nargs=-1, required=True)
@_job_options(for_estimate=True)
@_row_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--assume-size",
    help="WIDTHxHEIGHT for images whose size is unknown (default: each model's worst case).",
)
@click.option(
    "--probe-urls",
    is_flag=True,
    help="Read URL images' sizes from their first bytes (HTTP Range requests).",
)
@click.option(
    "--pilot",
    type=click.IntRange(min=0),
    default=0,
    help="Send N real requests on a random sample to measure the output length.",
)
@click.option(
    "-o",
    "--output",
    "output",
    help="Output folder of this job: count only rows not done, and use its answers' output length.",
)
def estimate(
    sources: tuple[str, ...],
    config_path: Path | None,
    models: tuple[str, ...],
    as_json: bool,
    assume_size: str | None,
    probe_urls: bool,
    pilot: int,
    output: str | None,
    spec: RowSpec,
    **flags: Any,
) -> None:
    """Exact prompt tokens (image tokens by each model's published rule, text tokens with
    o200k_base) and the expected and worst-case cost of captioning SOURCES, per model."""
    from pipeline.dryrun import estimate_sources
    from pipeline.sizes import parse_size

    config = _load_job(config_path, flags)
    report = estimate_sources(
        list(sources),
        config,
        list(models),
        output=output,
        assume_size=parse_size(assume_size) if assume_size else None,
        probe_urls=probe_urls,
        pilot=pilot,
        spec=spec,
    )
    _print_estimate(report, as_json)


@cli.command(short_help="Show what an output folder holds: done, errors, pending, cost.")
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(output: str, as_json: bool) -> None:
    """Report rows done (ok, errors by kind), pending against the manifest, tokens, cost and
    the job fingerprint of OUTPUT (a folder, or s3:// or gs://). Reads only the output
    folder; changes nothing."""
    from pipeline.mirror import readable
    from pipeline.status import read_status

    with readable(output) as folder:
        report = read_status(folder, label=output)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo("\n".join(report.lines()))


@cli.command(short_help="Write the results as one file, with the sources' own columns.")
@click.argument("output_dir")
@click.option(
    "-o",
    "--output",
    "target",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write: .parquet, .jsonl or .csv.",
)
def export(output_dir: str, target: Path) -> None:
    """Join the results in OUTPUT_DIR with the manifest's own columns (your labels,
    splits, ids) into one file, one row per answered image. Nested columns such as
    `choices` become JSON text in a CSV. Reads the folder only."""
    from pipeline.export import export as write
    from pipeline.mirror import readable

    with readable(output_dir) as folder:
        rows = write(folder, target)
    click.echo(f"exported {rows} rows to {target}")


@cli.command(short_help="Write an HTML report of an output folder, for operators.")
@click.argument("output")
@click.option(
    "-o",
    "--output",
    "target",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="The HTML file to write.",
)
def report(output: str, target: Path) -> None:
    """One self-contained HTML page about OUTPUT (a folder, or s3:// or gs://): totals,
    runs, token and latency distributions, errors by kind, the estimate against what was
    billed, label counts of a structured job, and a sample of captions with thumbnails.
    Reads the folder only."""
    from pipeline.mirror import readable
    from pipeline.report import write_report

    with readable(output) as folder:
        write_report(folder, output, target)
    click.echo(f"wrote {target}")


@cli.command("fake-endpoint", short_help="Serve a fake OpenAI-compatible endpoint on loopback.")
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
def fake_endpoint(
    port: int,
    latency: float,
    error_rate: float,
    seed: int,
    rate_limit: int | None,
    rate_limit_form: str,
    flaky_429: float,
    uplink_mbps: float | None,
) -> None:
    """Serve /chat/completions on 127.0.0.1 with deterministic captions and realistic
    usage, for trying jobs without a real key: it accepts any key
    (MEMORIES_API_KEY=any caption run ... --endpoint URL)."""
    from aiohttp import web

    from pipeline.fake_server import FakeOptions, make_app

    url = f"http://127.0.0.1:{port}/chat/completions"
    options = FakeOptions(
        latency=latency,
        error_rate=error_rate,
        seed=seed,
        rate_limit=rate_limit,
        rate_limit_form=rate_limit_form,
        flaky_429=flaky_429,
        uplink_mbps=uplink_mbps,
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


def main() -> None:
    cli(prog_name="caption")
