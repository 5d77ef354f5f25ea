from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.http import waits
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
