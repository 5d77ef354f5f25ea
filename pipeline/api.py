"""The Python API, for scripts and notebooks.

    import pipeline

    result = pipeline.run("data/samples", "out/run1", endpoint="fake")
    frame = pipeline.read_results("out/run1")
    costs = pipeline.estimate("data/samples", models=["gpt-4o", "gpt-4.1-mini"])

Settings are keyword arguments named as the flags (`max_cost=`, `concurrency=`) or as in
the TOML (`max_cost_usd=`, `top_p=`, `json_schema=`), over `config=` (a TOML file), over
the defaults. The key is `api_key=` or the environment variable, as for the CLI.

`run` works from a script and from inside a running event loop (Jupyter): there it runs
the job on a thread of its own. `await arun(...)` is the same, for async code. Neither
installs signal handlers. Failures that need fixing raise the typed errors of
`pipeline.errors` (a bad setting or source: `UsageError`; the endpoint refusing the job:
`FatalApiError`; an output folder that cannot be written: `StorageError`), never
`SystemExit`; outcomes are in the `RunResult` (rows with errors, a budget stop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import EXIT_FATAL_API, FatalApiError, StorageError
from pipeline.sources.ids import RowSpec

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config.settings import JobConfig

Sources = str | Path | Iterable[str | Path]


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one `run` did (this run's rows; the folder's totals are in `read_results`)."""

    output: str
    exit_code: int  # as the CLI's: 0 all ok, 1 error rows in the folder, 4 budget, 130 interrupted
    stopped: str  # "" or why the run stopped early: "budget", "interrupted"
    sent: int  # rows answered this run, ok or error
    ok: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    bytes_sent: int
    summary: str  # the CLI's summary line
    message: str | None  # what to do next, when the run stopped early

    def results(self) -> pd.DataFrame:
        return read_results(self.output)


def _sources(sources: Sources) -> list[str]:
    if isinstance(sources, str | Path):
        return [str(sources)]
    return [str(s) for s in sources]


def _config(config: str | Path | None, settings: dict[str, Any]) -> JobConfig:
    from pipeline.config.loading import load_config

    return load_config(Path(config) if config is not None else None, settings)


def _run(
    sources: Sources,
    output: str | Path,
    config: str | Path | None,
    api_key: str | None,
    retry_errors: bool,
    accept_new_source: bool,
    rows: RowSpec,
    progress: bool,
    settings: dict[str, Any],
) -> RunResult:
    from pipeline.jobs.run import run_job

    outcome = run_job(
        _sources(sources),
        output,
        _config(config, settings),
        retry_errors=retry_errors,
        show_progress=progress,
        spec=rows,
        accept_new_source=accept_new_source,
        api_key=api_key,
        handle_signals=False,
    )
    if outcome.stopped == "fatal":
        raise FatalApiError(outcome.message or outcome.summary)
    if outcome.stopped == "storage":
        raise StorageError(outcome.message or outcome.summary)
    tally = outcome.tally
    return RunResult(
        output=str(output),
        exit_code=outcome.exit_code,
        stopped=outcome.stopped,
        sent=tally.done,
        **tally.to_json(),
        bytes_sent=tally.bytes_sent,
        summary=outcome.summary,
        message=outcome.message,
    )


def _loop_running() -> bool:
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop()
        return True
    return False


def run(
    sources: Sources,
    output: str | Path,
    *,
    config: str | Path | None = None,
    api_key: str | None = None,
    retry_errors: bool = False,
    accept_new_source: bool = False,
    id_from: str = "path",
    column: str | None = None,
    id_column: str | None = None,
    progress: bool = False,
    **settings: Any,
) -> RunResult:
    """Caption `sources` into `output` (a folder, or s3:// / gs://), resuming what it
    holds, as `caption run` does."""
    args = (sources, output, config, api_key, retry_errors, accept_new_source,
            RowSpec(column, id_column, id_from), progress, settings)  # fmt: skip
    if not _loop_running():
        return _run(*args)
    # Inside a running loop (Jupyter): the job gets a thread, and its own loop there.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="caption") as pool:
        return pool.submit(_run, *args).result()


async def arun(sources: Sources, output: str | Path, **options: Any) -> RunResult:
    """`run`, awaitable, with the same arguments: the job runs on a thread, and the
    caller's loop stays free."""
    return await asyncio.to_thread(functools.partial(run, sources, output, **options))


def estimate(
    sources: Sources,
    models: Iterable[str] = (),
    *,
    config: str | Path | None = None,
    output: str | Path | None = None,
    id_from: str = "path",
    column: str | None = None,
    id_column: str | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """One row per model (the configured one when `models` is empty): images, prompt
    and output tokens, expected and worst-case cost in USD, as `caption estimate`."""
    import pandas as pd

    from pipeline.jobs.dryrun import estimate_sources

    report = estimate_sources(
        _sources(sources),
        _config(config, settings),
        list(models),
        output=output,
        spec=RowSpec(column, id_column, id_from),
    )
    return pd.DataFrame(report.to_json()["models"])


def compare(
    sources: Sources,
    output: str | Path,
    *,
    sample: int,
    models: Iterable[str] = (),
    prompts: dict[str, str] | None = None,
    truth: dict[str, str] | None = None,
    seed: int = 0,
    margin: float = 2.0,
    judge: str | None = None,
    config: str | Path | None = None,
    api_key: str | None = None,
    id_from: str = "path",
    column: str | None = None,
    id_column: str | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """`caption compare`: every model with every prompt (`prompts`: name -> text) on one
    seeded sample of `sample` images; one row per variant, as `CMP/compare.parquet`
    (accuracy against `truth`, field -> column, else agreement; cost as billed and
    projected to the whole source). `frame.attrs` holds the recommendation, the exit
    code and why it stopped early (a budget cap). Writes `CMP/compare.html` too."""
    import pandas as pd

    from pipeline.jobs.compare import TABLE_NAME, CompareSpec, run_compare
    from pipeline.jobs.sample import sample_paths
    from pipeline.report.compare_page import write_compare_page

    spec = CompareSpec(
        sources=_sources(sources),
        output=Path(output),
        sample=sample,
        models=list(models),
        prompts=list((prompts or {}).items()),
        truth=dict(truth or {}),
        seed=seed,
        margin=margin / 100,
        judge=judge,
        spec=RowSpec(column, id_column, id_from),
    )
    outcome = run_compare(spec, _config(config, settings), api_key=api_key, handle_signals=False)
    write_compare_page(
        spec.output, outcome.table, sample_paths(spec.output)[0], outcome.recommendation
    )
    if outcome.exit_code == EXIT_FATAL_API:
        raise FatalApiError(outcome.message or "the endpoint refused the comparison")
    frame = pd.read_parquet(spec.output / TABLE_NAME)
    # A budget stop is an outcome, not a failure: the variants measured so far are here.
    frame.attrs.update(
        recommendation=outcome.recommendation,
        exit_code=outcome.exit_code,
        message=outcome.message,
    )
    return frame


def read_results(output: str | Path, include_removed: bool = False) -> pd.DataFrame:
    """One row per answered image: the result columns, the manifest's own columns beside
    them (your labels, splits, ids), and a structured job's `parsed` as one column per
    field (`parsed.subject`). Rows whose source left the manifest are left out unless
    `include_removed`. Reads the folder only (a bucket folder through a copy)."""
    import pyarrow as pa

    from pipeline.errors import UsageError
    from pipeline.output.export import flatten_parsed, joined
    from pipeline.output.folder import OutputDir
    from pipeline.output.mirror import readable

    with readable(str(output)) as folder:
        out = OutputDir(folder)
        if not out.exists() or not out.manifest.exists():
            raise UsageError(f"{output}: not a caption output folder (no manifest)")
        tables = list(joined(out, include_removed))
        schema = out.result_schema()
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return flatten_parsed(table).to_pandas(types_mapper=_nullable)


def _nullable(kind: Any) -> Any:
    """Integers and booleans as pandas' nullable dtypes: an error row's missing token
    count or label stays <NA>, and the column stays int64 or bool, not float64 or object."""
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_integer(kind):
        signed = "Int" if pa.types.is_signed_integer(kind) else "UInt"
        return pd.api.types.pandas_dtype(f"{signed}{kind.bit_width}")
    if pa.types.is_boolean(kind):
        return pd.BooleanDtype()
    return None
