"""The unit of work: images are read off the event loop, a chunk at a time."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.engine import prepare
from pipeline.sources.images import LoadedImage
from tests.fakes import ScriptedServer
from tests.helpers import SAMPLES, results


def test_images_are_read_in_a_thread_not_on_the_event_loop(
    tmp_path: Path, server: ScriptedServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = prepare.load_image

    def recording(source: str, max_bytes: int, fetched: bytes | None = None) -> LoadedImage:
        threads.append(threading.current_thread())
        return real(source, max_bytes, fetched)

    monkeypatch.setattr(prepare, "load_image", recording)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["run", str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert len(results(out)) == 6
    assert len(threads) == 6
    assert threading.main_thread() not in threads  # the loop runs in the main thread
