"""The options `ingest`, `run` and `estimate` share, and how they become a job: the
row options as one `RowSpec`, the job settings as a `JobConfig` (flag > file > default),
the executor as an `ExecutorSpec`."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import click

from pipeline.errors import UsageError
from pipeline.sources.ids import ID_FROM, RowSpec


def row_options(fn: Any) -> Any:
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


def job_options(*, for_estimate: bool = False) -> Any:
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


def load_job(config_path: Path | None, flags: dict[str, Any]) -> Any:
    from pipeline.config.settings import FLAG_SETTINGS, load_config

    overrides = {k: v for k, v in flags.items() if k in FLAG_SETTINGS}
    return load_config(config_path, overrides)


def executor_spec(kind: str, address: str | None, workers: int | None, shared_fs: bool) -> Any:
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


def print_estimate(report: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo("\n".join(report.lines()))
