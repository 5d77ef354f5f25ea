"""`caption run` against hostile servers, odd files and bad disks: paid answers are never
locked away, nothing hangs, and every failure is one line with its exit code."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from pipeline.cli import cli
from pipeline.testing.fake_server import FakeOptions, caption_for, make_app
from tests.fakes import ENDLESS, Reply, ScriptedServer, digest_of_file, serve_in_thread
from tests.helpers import SAMPLES, by_name, distinct_images, results, run

pytestmark = pytest.mark.usefixtures("fast_backoff")


def status(out: Path) -> Result:
    return CliRunner().invoke(cli, ["status", str(out)])


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    shutil.copytree(SAMPLES, root)
    return root


def job(tmp_path: Path, text: str) -> str:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return str(path)


def one_line(result: Result) -> str:
    """The run's stderr: one line, no traceback."""
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.startswith("caption:")]
    assert len(lines) == 1, result.output
    return lines[0]


# -- answers ---------------------------------------------------------------------------


def test_an_answer_over_arrows_block_size_is_stored_with_all_the_others(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """One 1.1 MB caption once made the journal unreadable: 50 paid rows locked away."""
    src = distinct_images(tmp_path / "imgs", 50)
    big = "word " * 220_000
    body = {
        "id": "big",
        "choices": [{"index": 0, "message": {"content": big}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 250_000},
    }
    server.plan(digest_of_file(src / "img_007.png"), Reply(body=body))
    out = tmp_path / "out"
    result = run(str(src), "-o", str(out), "--endpoint", server.url)
    assert result.exit_code == 0, result.output
    rows = by_name(results(out))
    assert len(rows) == 50
    assert rows["img_007.png"]["caption"] == big
    assert rows["img_008.png"]["caption"] == caption_for(digest_of_file(src / "img_008.png"))
    assert status(out).exit_code == 0


@pytest.mark.timeout(60)
def test_an_endless_answer_is_an_error_row_of_its_own_kind(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    server.plan(digest_of_file(imgs / "icon.gif"), ENDLESS)
    out = tmp_path / "out"
    config = job(tmp_path, "[limits]\nmax_response_mb = 1\n")
    result = run(str(imgs), "-o", str(out), "--endpoint", server.url, "--config", config)
    assert result.exit_code == 1, result.output
    rows = by_name(results(out))
    bad = rows.pop("icon.gif")
    assert (bad["status"], bad["error_kind"], bad["attempts"]) == (
        "error",
        "response_too_large",
        1,
    )
    assert "larger than 1 MB" in bad["error"]
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert server.count(digest_of_file(imgs / "icon.gif")) == 1  # never sent again


def test_a_redirect_stops_the_job_and_leaves_rows_pending(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    elsewhere = "http://127.0.0.2:9/chat/completions"
    server.default = Reply(status=302, raw=b"", headers={"Location": elsewhere})
    out = tmp_path / "out"
    result = run(str(imgs), "-o", str(out), "--endpoint", server.url, "--concurrency", "1")
    assert result.exit_code == 3, result.output
    assert f"redirects to {elsewhere}" in one_line(result)
    assert results(out) == []  # nothing stored as ok, nothing as an error: all pending
    assert server.count() == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reset", ["99999", "1e9", "inf", "1h", str(int(time.time()) + 99999)])
def test_a_huge_or_odd_reset_header_cannot_freeze_the_run(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str, reset: str
) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": reset}
    server.default = Reply(headers=headers)
    out = tmp_path / "out"
    config = job(tmp_path, "[limits]\nmax_retry_after = 0.2\nconcurrency = 1\n")
    started = time.monotonic()
    result = run(str(imgs), "-o", str(out), "--endpoint", server.url, "--config", config)
    assert result.exit_code == 0, result.output
    assert len(results(out)) == 6
    assert time.monotonic() - started < 20  # 6 pauses of at most 0.2 s, not 27 hours


@pytest.mark.timeout(60)
def test_retry_after_nan_is_not_a_wait(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    limited = Reply(status=429, body={"error": {"message": "slow"}}, headers={"Retry-After": "nan"})
    server.plan(digest_of_file(imgs / "icon.gif"), limited, limited)
    out = tmp_path / "out"
    result = run(str(imgs), "-o", str(out), "--endpoint", server.url)
    assert result.exit_code == 0, result.output
    assert by_name(results(out))["icon.gif"]["attempts"] == 3


# -- odd files -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_fifo_named_like_an_image_is_an_error_row_not_a_hang(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    os.mkfifo(imgs / "pipe.png")
    out = tmp_path / "out"
    result = run(str(imgs), "-o", str(out), "--endpoint", server.url)
    assert result.exit_code == 1, result.output
    rows = by_name(results(out))
    pipe = rows.pop("pipe.png")
    assert (pipe["status"], pipe["error_kind"]) == ("error", "invalid_image")
    assert pipe["error"].endswith("not a regular file (a FIFO, socket or device)")
    assert [r["status"] for r in rows.values()] == ["ok"] * 6
    assert server.count() == 6


def test_a_file_name_that_is_not_utf8_is_one_error_row(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    shutil.copy(imgs / "icon.gif", os.fsencode(imgs) + b"/caf\xe9.gif")
    out = tmp_path / "out"
    result = run(str(imgs), "-o", str(out), "--endpoint", server.url)
    assert result.exit_code == 1, result.output
    rows = results(out)
    (bad,) = [r for r in rows if r["status"] == "error"]
    assert bad["source"].endswith("/caf%E9.gif")
    assert "caf\\xe9.gif' : the file name is not UTF-8".replace("' :", "':") in bad["error"]
    assert len(rows) == 7
    assert server.count() == 6


def test_an_empty_folder_is_one_line_and_leaves_no_folder(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("")
    for source in ("empty", "empty.txt"):
        out = tmp_path / f"out-{source}"
        result = run(str(tmp_path / source), "-o", str(out), "--endpoint", server.url)
        assert result.exit_code == 2, result.output
        assert "no images found" in one_line(result)
        assert not out.exists()
    out = tmp_path / "out-missing"  # a source that does not exist: no folder either
    result = run(str(tmp_path / "nowhere"), "-o", str(out), "--endpoint", server.url)
    assert result.exit_code == 2, result.output
    assert "no such file or folder" in one_line(result)
    assert not out.exists()


def test_an_output_folder_whose_name_has_a_colon(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow took `run-2026-11-29T11:48:34+00:00/...` for a URI with a scheme."""
    monkeypatch.chdir(tmp_path)
    name = "run-2026-11-29T11:48:34+00:00"
    assert run("imgs", "-o", name, "--endpoint", server.url).exit_code == 0
    assert run("imgs", "-o", name, "--endpoint", server.url).exit_code == 0
    assert server.count() == 6
    assert len(results(tmp_path / name)) == 6
    assert status(Path(name)).exit_code == 0


def test_a_corrupt_shard_is_named(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    out = tmp_path / "out"
    assert run(str(imgs), "-o", str(out), "--endpoint", server.url).exit_code == 0
    shard = out / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:200])
    for result in (run(str(imgs), "-o", str(out), "--endpoint", server.url), status(out)):
        assert result.exit_code == 2, result.output
        assert f"{shard}: corrupt result shard" in one_line(result)
    assert server.count() == 6


# -- full and read-only disks ----------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small file system, so that ENOSPC and EROFS come from the kernel."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
    return filler


@pytest.mark.timeout(120)
def test_a_full_disk_stops_cleanly_and_a_rerun_finishes(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    src = distinct_images(tmp_path / "imgs", 60)
    with tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "out"
        state: dict[str, Path] = {}

        def fill_at_20(received: int) -> None:
            if received == 20 and "filler" not in state:
                state["filler"] = fill(disk)

        server.on_request = fill_at_20
        result = run(str(src), "-o", str(out), "--endpoint", server.url, "--concurrency", "4")
        assert result.exit_code == 5, result.output
        line = one_line(result)
        assert str(out) in line
        assert "no space left" in line
        sent_first = server.count()
        assert sent_first < 60  # it stopped sending

        state["filler"].unlink()
        server.on_request = None
        result = run(str(src), "-o", str(out), "--endpoint", server.url, "--concurrency", "4")
        assert result.exit_code == 0, result.output
        rows = results(out)
        assert sorted(Path(r["source"]).name for r in rows) == sorted(p.name for p in src.iterdir())
        assert {r["status"] for r in rows} == {"ok"}
        # Re-sent: at most what was in flight when the disk filled.
        assert server.count() - 60 <= 4


@pytest.mark.timeout(60)
def test_a_read_only_output_is_one_line_and_keeps_what_it_holds(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:
        out = disk / "out"
        assert run(str(imgs), "-o", str(out), "--endpoint", server.url).exit_code == 0
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        shutil.copy(SAMPLES / "checkerboard.png", imgs / "new.png")
        Image.new("RGB", (9, 9)).save(imgs / "new.png")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        try:
            result = run(str(imgs), "-o", str(out), "--endpoint", server.url)
            assert result.exit_code == 5, result.output
            assert "read-only file system" in one_line(result)
            assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
            fresh = run(str(imgs), "-o", str(disk / "fresh"), "--endpoint", server.url)
            assert fresh.exit_code == 5, fresh.output
            assert "read-only file system" in one_line(fresh)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        result = run(str(imgs), "-o", str(out), "--endpoint", server.url)
        assert result.exit_code == 0, result.output
        assert server.count() == 7
        rows = pq.read_table(out).to_pylist()  # the new row, merged with the night before's
        assert len({r["id"] for r in rows}) == len(rows) == 7


def test_errno_of_a_full_disk_is_what_the_tests_expect() -> None:
    assert os.strerror(errno.ENOSPC).lower() == "no space left on device"
    assert os.strerror(errno.EROFS).lower() == "read-only file system"


# -- rate limits -----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("form", ["openai", "memories"])
def test_a_server_rate_cap_is_learned_and_hardly_ever_hit(
    tmp_path: Path, key: str, form: str
) -> None:
    """20 requests in any sliding second; told nothing, the run learns the limit from the
    headers of the first answers and paces under it."""
    src = distinct_images(tmp_path / "imgs", 60)
    app = make_app(FakeOptions(rate_limit=20, rate_limit_form=form, latency=0.02))
    out = tmp_path / "out"
    with serve_in_thread(app) as base:
        started = time.monotonic()
        result = run(str(src), "-o", str(out), "--endpoint", f"{base}/chat/completions")
        elapsed = time.monotonic() - started
        with urllib.request.urlopen(f"{base}/stats") as answer:
            stats = json.loads(answer.read())
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in results(out)} == {"ok"}
    assert len(results(out)) == 60
    assert stats["refused"] <= 2  # at most the edge of the first second
    assert elapsed > 2.0  # 60 requests at 20/s cannot take less than 2 s: it was paced


@pytest.mark.timeout(60)
def test_one_off_429s_slow_only_their_own_rows(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """A 429 with Retry-After: 1 and no empty budget: only that row waits its second."""
    src = distinct_images(tmp_path / "imgs", 40)
    limited = Reply(
        status=429,
        body={"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
        headers={"Retry-After": "1"},
    )
    for path in sorted(src.iterdir())[:4]:
        server.plan(digest_of_file(path), limited)
    out = tmp_path / "out"
    started = time.monotonic()
    result = run(str(src), "-o", str(out), "--endpoint", server.url, "--concurrency", "4")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert len(results(out)) == 40
    assert server.count() == 44
    # Before, each 429 paused every request for its second: at least 4 s in all.
    assert elapsed < 3.5


# -- memories.ai's envelope in a 200 ---------------------------------------------------


def envelope(code: str, msg: str) -> Reply:
    return Reply(body={"code": code, "msg": msg, "data": None, "success": False, "failed": True})


def test_0402_in_a_200_stops_the_job_with_rows_pending(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    server.default = envelope("0402", "Insufficient balance")
    out = tmp_path / "out"
    result = run(str(imgs), "-o", str(out), "--endpoint", server.url, "--concurrency", "2")
    assert result.exit_code == 3, result.output
    assert "not enough credits" in one_line(result)
    assert results(out) == []  # pending, not failed
    assert server.count() <= 2  # what was in flight; nothing retried


def test_0429_in_a_200_is_a_rate_limit_and_0001_rejects_the_row(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    server.plan(digest_of_file(imgs / "icon.gif"), envelope("0429", "too busy"))
    server.plan(digest_of_file(imgs / "sunset.jpg"), envelope("0001", "bad parameter"))
    out = tmp_path / "out"
    result = run(str(imgs), "-o", str(out), "--endpoint", server.url)
    assert result.exit_code == 1, result.output
    rows = by_name(results(out))
    assert (rows["icon.gif"]["status"], rows["icon.gif"]["attempts"]) == ("ok", 2)
    bad = rows["sunset.jpg"]
    assert (bad["status"], bad["error_kind"], bad["attempts"]) == ("error", "rejected", 1)
    assert "code 0001: bad parameter (bad parameters)" in bad["error"]
    assert server.count() == 7
