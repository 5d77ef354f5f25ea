"""A pilot: real requests for a sample of rows, measured, nothing written (the
estimate's `--pilot N` without an output folder)."""

from __future__ import annotations

import asyncio

from pipeline.config.apikey import read_api_key
from pipeline.config.settings import JobConfig
from pipeline.engine.budget import Budget
from pipeline.engine.work import StopReason, Tally, caption_rows
from pipeline.errors import EXIT_OK, EXIT_ROW_ERRORS, FatalApiError
from pipeline.executors.base import open_captioner
from pipeline.records import ManifestRow, ResultRow

# A pilot (a sampled run) whose rows all have an outcome, errors included, measured fine.
EXIT_PILOT_OK = (EXIT_OK, EXIT_ROW_ERRORS)


class _Discard:
    """A result sink that keeps nothing: a pilot without an output folder is only measured."""

    def write(self, row: ResultRow) -> None:
        pass


async def _pilot(
    config: JobConfig, key: str, rows: list[ManifestRow]
) -> tuple[Tally, float | None]:
    stop = StopReason()
    budget = Budget(None, measure=True)  # no cap: it measures the billed-to-estimated ratio
    async with open_captioner(config, key, asyncio.Event(), budget) as captioner:
        tally = await caption_rows(
            rows, captioner, _Discard(), workers=config.limits.concurrency, stop=stop
        )
    if stop.kind == "fatal":
        raise FatalApiError(stop.message)
    return tally, budget.learned_ratio


def run_pilot(config: JobConfig, rows: list[ManifestRow]) -> tuple[Tally, float | None]:
    """Send real requests for `rows` (a sample) and measure them, nothing written: the
    tally, and the billed-to-estimated ratio of their prompt tokens."""
    return asyncio.run(_pilot(config, read_api_key(config), rows))
