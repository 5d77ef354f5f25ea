"""The options `ingest`, `run` and `estimate` share, and how they become a job: the
row options as one `RowSpec`, the job settings as a `JobConfig` (flag > file > default),
the executor as an `ExecutorSpec`."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pipeline.config.flags import FLAG_SETTINGS, FLAGS, Flag
from pipeline.errors import UsageError
from pipeline.sources.ids import ID_FROM, RowSpec

if TYPE_CHECKING:  # imported when used: the CLI starts light
    from pipeline.config.settings import JobConfig
    from pipeline.cost.estimate import Estimate
    from pipeline.executors.spec import ExecutorSpec

Command = TypeVar("Command", bound=Callable[..., Any])


def row_options(fn: Callable[..., Any]) -> Callable[..., Any]:
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


def job_options(
    *, for_estimate: bool = False, models: bool = False
) -> Callable[[Command], Command]:
    """Flags that override the job config (flag > file > default), built from the one
    table of them (`config/flags.py`). An estimate sends nothing unless asked for a
    pilot, so the flags that only shape sending say so, and the run's limits are absent.
    `models`: --model is repeated (into `models`), as estimate and compare take it."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Job config (TOML); see configs/default.toml.",
        )
    ]
    for flag in FLAGS:
        if (for_estimate or models) and flag.name == "model":
            options.append(
                click.option(
                    "--model",
                    "models",
                    multiple=True,
                    help="Model to price; repeat to compare models side by side (default: "
                    "the job's)."
                    if for_estimate
                    else "A model to compare; repeat it (default: the job's).",
                )
            )
        elif not (for_estimate and flag.estimate == "run"):
            options.append(_option(flag, for_estimate))

    def decorate(fn: Command) -> Command:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _option(flag: Flag, for_estimate: bool) -> Callable[[Command], Command]:
    text = flag.help
    if for_estimate and flag.estimate == "pilot":
        text = text.removesuffix(".") + " (--pilot only)."
    if for_estimate and flag.name == "concurrency":
        text = "Requests in flight at once (--pilot, and --probe-urls' reads)."
    kind: Any = flag.type
    if isinstance(kind, tuple):
        kind = click.Choice(kind)
    elif kind is Path:
        kind = click.Path(dir_okay=False, path_type=Path)
    if flag.is_flag:
        return click.option(flag.option, is_flag=True, default=None, help=text)
    return click.option(flag.option, type=kind, metavar=flag.metavar, help=text)


def load_job(config_path: Path | None, flags: dict[str, Any]) -> JobConfig:
    from pipeline.config.loading import load_config

    overrides = {k: v for k, v in flags.items() if k in FLAG_SETTINGS}
    return load_config(config_path, overrides)


def executor_spec(
    kind: str, address: str | None, workers: int | None, shared_fs: bool
) -> ExecutorSpec:
    from pipeline.executors.spec import ExecutorSpec

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


def print_estimate(report: Estimate, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo("\n".join(report.lines()))
