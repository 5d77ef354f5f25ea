"""The local executor's progress bar: what holds the run back, and a last frame that
agrees with the summary."""

from __future__ import annotations

import pytest

from pipeline.engine.work import Tally
from pipeline.executors.progress import Progress
from pipeline.records import ResultRow


def row(i: int) -> ResultRow:
    return ResultRow(
        id=str(i), source="s", status="ok", attempts=1, latency_s=0.1, finished_at_ms=0
    )


class FakeLimiter:
    in_flight = 3
    window = 8.0

    def held_back(self) -> str:
        return "paused by the server"


class FakeCaptioner:
    limiter = FakeLimiter()
    retries = 2


def test_the_last_frame_shows_the_final_dollars(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(3)
    tally = Tally()
    for i, cost in enumerate((0.5, 0.25, 0.125)):
        tally.cost_usd += cost
        progress(row(i), tally)  # drawn at most twice a second: the $ lags
    progress.close()
    assert progress.bar.postfix == "errors=0 $0.8750"


def test_the_bar_says_what_holds_the_run_back() -> None:
    progress = Progress(1)
    progress.captioner = FakeCaptioner()  # type: ignore[assignment]
    assert progress.describe() == (
        "errors=0 $0.0000 in-flight=3/8 (paused by the server) retries=2"
    )
    progress.close()
