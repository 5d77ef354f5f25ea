from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.engine import captioner as worker
from tests.fakes import ScriptedServer, scripted_server

# moto's S3 server and a bucket per test (tests/buckets.py), for any test module.
pytest_plugins = ["tests.buckets"]

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"
FIXTURES = REPO / "data" / "fixtures"
KEY = "sk-mavi-TESTSECRET-0123456789"


def spawn_run(*args: str) -> subprocess.Popen[str]:
    """`caption run ARGS --quiet` in a process of its own (to kill, race or cut off)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", *args, "--quiet"],
        env={**os.environ, "MEMORIES_API_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff without a Retry-After takes milliseconds, not seconds, in tests."""
    monkeypatch.setattr(worker, "BACKOFF_BASE_S", 0.01)
    monkeypatch.setattr(worker, "BACKOFF_MAX_S", 0.02)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as s:
        yield s


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MEMORIES_API_KEY", KEY)
    return KEY
