"""The `caption` command line. Heavy libraries are imported inside the commands, so that
`caption --help` stays fast (no pandas, pyarrow or aiohttp at start-up)."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import click

from pipeline import __version__
from pipeline.cli.options import executor_spec, job_options, load_job, print_estimate, row_options
from pipeline.config.flags import FLAG_SETTINGS
from pipeline.errors import (
    EXIT_FATAL_API,
    EXIT_INTERRUPTED,
    EXIT_STORAGE,
    EXIT_USAGE,
    FatalApiError,
    StorageError,
    UsageError,
)
from pipeline.sources.ids import RowSpec

log = logging.getLogger("pipeline")


class _Group(click.Group):
    """Turns `UsageError` (exit 2), `FatalApiError` (exit 3) and `StorageError` (exit 5)
    into one line on stderr; and takes `-v` wherever it is given."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, verbose_first(args))

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


VERBOSE = re.compile(r"^(-v+|--verbose)$")


def verbose_first(args: list[str]) -> list[str]:
    """`caption run -v ...` as `caption -v run ...`: -v is the group's option, and users
    put it after the command as often as before. Not after `--`."""
    end = args.index("--") if "--" in args else len(args)
    moved = [a for a in args[:end] if VERBOSE.match(a)]
    return moved + [a for a in args[:end] if not VERBOSE.match(a)] + args[end:]


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
        from pipeline.io.storage import configure

        try:
            options = json.loads(storage_options)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON ({exc})", param_hint="--storage-options") from None
        if not isinstance(options, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--storage-options")
        configure(options)


@cli.command(short_help="Read image sources into a Parquet manifest with stable ids.")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    help="Manifest file to write (Parquet; a local path, or s3:// or gs://).",
)
@row_options
def ingest(sources: tuple[str, ...], output: str, spec: RowSpec) -> None:
    """Read SOURCES (folders, globs, URLs, images, or .txt/.csv/.tsv/.jsonl/.parquet lists)
    into a manifest with columns id, source and any extra columns of the lists."""
    from pipeline.io.storage import check_scheme, is_remote
    from pipeline.sources.manifest import write_manifest

    if not output.strip():
        raise UsageError("the manifest file is an empty path; name a file (-o FILE)")
    check_scheme(output)
    summary = write_manifest(list(sources), output if is_remote(output) else Path(output), spec)
    click.echo(summary.line())


@cli.command(short_help="Caption images: resumable, rate-limited, priced per row.")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    help="Output folder (a local path, or s3:// or gs://): manifest, run.json and shards.",
)
@job_options()
@row_options
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
    config = load_job(config_path, flags)
    if dry_run:
        from pipeline.jobs.dryrun import dry_run as check
        from pipeline.output.mirror import readable

        with readable(output, must_exist=False) as folder:
            report, problems, exit_code = check(list(sources), folder, config, spec)
        print_estimate(report, as_json=False)
        for problem in problems:
            click.echo(f"caption: dry run: {problem}", err=True)
        if exit_code == 0:
            click.echo(
                "ready: the config, the key, the output folder and every local file check "
                "out; nothing was sent"
            )
        sys.exit(exit_code)

    from pipeline.jobs.run import run_job

    outcome = run_job(
        list(sources),
        output,
        config,
        retry_errors=retry_errors,
        show_progress=not quiet and sys.stderr.isatty(),
        spec=spec,
        accept_new_source=accept_new_source,
        executor=executor_spec(executor, ray_address, workers, shared_fs),
    )
    click.echo(outcome.summary)
    if outcome.message:
        click.echo(f"caption: {outcome.message}", err=True)
    sys.exit(outcome.exit_code)


@cli.command(short_help="Estimate tokens and cost per model, before anything is sent.")
@click.argument("sources", nargs=-1, required=True)
@job_options(for_estimate=True)
@row_options
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
    help="Send N real requests on a random sample (to the first --model) to measure the "
    "output length and what the server bills for prompts against this estimate.",
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
    from pipeline.cost.sizes import parse_size
    from pipeline.jobs.dryrun import estimate_sources

    if models and pilot:  # a pilot measures the first --model
        flags["model"] = models[0]
    config = load_job(config_path, flags)
    if output is not None and config_path is None:
        # The folder's own job, where no flag says otherwise: its answers then tell the
        # expected output length without repeating every flag of the run.
        from pipeline.config.loading import load_config
        from pipeline.jobs.dryrun import folder_job

        if (job := folder_job(output)) is not None:
            given = {k: v for k, v in flags.items() if k in FLAG_SETTINGS and v is not None}
            recorded = {("url" if k == "endpoint" else k): v for k, v in job.items()}
            config = load_config(None, {**recorded, **given})
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
    print_estimate(report, as_json)


from pipeline.cli.compare import compare  # noqa: E402
from pipeline.cli.readonly import export, fake_endpoint, prices, report, status  # noqa: E402

for command in (compare, prices, status, export, report, fake_endpoint):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="caption")
