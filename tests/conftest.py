from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.http import waits
from pipeline.io import idparts
from tests.fakes import ScriptedServer, scripted_server
from tests.helpers import KEY, SAMPLES

# moto's S3 server and a bucket per test (tests/buckets.py), for any test module.
pytest_plugins = ["tests.buckets"]


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff without a Retry-After takes milliseconds, not seconds, in tests."""
    monkeypatch.setattr(waits, "BACKOFF_BASE_S", 0.01)
    monkeypatch.setattr(waits, "BACKOFF_MAX_S", 0.02)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as s:
        yield s


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MEMORIES_API_KEY", KEY)
    return KEY


@pytest.fixture(params=["in memory", "on disk"])
def id_parts(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test runs twice: with a folder's ids held in memory (as at small sizes), and
    with them on disk by partition from the first id (as past two million,
    `io/idparts.py`), in four partitions so that each holds several."""
    if request.param == "on disk":
        monkeypatch.setattr(idparts, "SPILL_AT", 1)
        monkeypatch.setattr(idparts, "BITS", 2)
        monkeypatch.setattr(idparts, "_FLUSH", 3)
    return str(request.param)
