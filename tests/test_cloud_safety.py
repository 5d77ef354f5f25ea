"""Bucket folders never re-pay what was paid: a bucket that goes away mid-run, a lock
raced for by many runs, a holder killed on this machine, and bucket errors as one line.
Against moto's S3 server, through a TCP proxy the tests cut to make an outage."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("s3fs", reason="the cloud extra: pip install 'caption[cloud]'")

from pipeline.cli import cli
from pipeline.io import storage
from pipeline.output.bucketlock import BucketLock
from tests.buckets import CuttableProxy, bucket_results, client, keys_under
from tests.fakes import ScriptedServer
from tests.helpers import SAMPLES, distinct_images, spawn_run


def lock_keys(bucket: str) -> list[str]:
    return [k for k in keys_under(bucket, "out/.lock/") if "/g-" in k]


@pytest.mark.timeout(150)
def test_a_bucket_gone_mid_run_stops_sending_and_nothing_is_paid_twice(
    proxied_bucket: tuple[str, CuttableProxy],
    server: ScriptedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket, proxy = proxied_bucket
    monkeypatch.setenv("CAPTION_LOCK_LEASE_S", "6")  # renewals every 2 s
    imgs = distinct_images(tmp_path / "imgs", 200)
    out = f"s3://{bucket}/out"
    args = (str(imgs), "-o", out, "--endpoint", server.url, "--concurrency", "2")
    server.delay = 0.2
    # Cut before the first push: the bucket never sees a row of this run.
    server.on_request = lambda n: proxy.cut() if n == 3 else None
    proc = spawn_run(*args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("WARNING")]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert bucket in lines[0]
    assert "unreachable" in lines[0]
    assert "safe in the local mirror" in lines[0]
    paid = server.count()
    assert paid < 200  # it stopped sending
    time.sleep(1.0)
    assert server.count() == paid  # and nothing is sent after it ended

    server.on_request = None
    server.delay = 0
    proxy.restore()
    storage.configure({})
    # The same machine, at once: the killed holder's process is gone, so its lease need
    # not be waited out; the mirror keeps its rows although the bucket has no run.json.
    code = CliRunner().invoke(cli, ["run", *args, "--quiet"])
    assert code.exit_code == 0, code.output
    assert server.count() == 200  # every image paid once, over both runs
    rows = bucket_results(bucket, "out")
    assert len(rows) == 200
    assert len({r["id"] for r in rows}) == 200


@pytest.mark.timeout(150)
def test_many_runs_racing_for_a_killed_holders_lock_one_wins(
    bucket: str, server: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    imgs = distinct_images(tmp_path / "imgs", 24)
    out = f"s3://{bucket}/out"
    args = (str(imgs), "-o", out, "--endpoint", server.url, "--concurrency", "2")
    server.delay = 0.2
    first = spawn_run(*args)
    deadline = time.monotonic() + 60
    while server.count() < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    answered = set(server.answered)
    assert lock_keys(bucket)  # the killed run's lock stays in the bucket

    racers = [spawn_run(*args) for _ in range(8)]
    results = [p.communicate(timeout=120) for p in racers]
    codes = sorted(p.returncode for p in racers)
    assert codes == [0] + [2] * 7, results
    for p, (_, err) in zip(racers, results, strict=True):
        if p.returncode == 2:
            assert "is in use by another caption run" in err
    resent = set(server.requests_by_digest()) & answered
    assert sum(server.answered.values()) <= 24 + 2  # at most what was in flight at the kill
    assert len(resent) <= 24
    rows = bucket_results(bucket, "out")
    assert len(rows) == 24
    assert len({r["id"] for r in rows}) == 24


def test_threads_racing_for_an_expired_lock_one_holds_it(bucket: str) -> None:
    url = f"s3://{bucket}/out"
    stale = {"holder": "elsewhere:1:x", "host": "elsewhere", "expires_at": time.time() - 1}
    client().put_object(Bucket=bucket, Key="out/.lock/g-000000000004", Body=json.dumps(stale))
    locks = [BucketLock(url) for _ in range(12)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(locks))

    def take(lock: BucketLock) -> None:
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append("held")
        except Exception as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes.count("held") == 1, outcomes
    holder = next(lock for lock in locks if lock.generation)
    assert holder.generation == 5
    holder.renew()  # the holder keeps it; a loser that renews learns it never had it
    assert holder.generation == 6
    holder.release()
    fresh = BucketLock(url)
    fresh.acquire()  # released: taken at once, with the next number
    assert fresh.generation == 7


@pytest.mark.parametrize(
    ("target", "says"),
    [("s3://no-such-bucket-here/out", "no such bucket: no-such-bucket-here")],
)
def test_a_missing_bucket_is_one_line_and_exit_5(
    bucket: str, target: str, says: str, server: ScriptedServer
) -> None:
    result = CliRunner().invoke(cli, ["run", str(SAMPLES), "-o", target, "--endpoint", server.url])
    assert result.exit_code == 5, result.output
    assert says in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert server.count() == 0


def test_an_unreachable_bucket_at_start_is_one_line_and_exit_5(
    proxied_bucket: tuple[str, CuttableProxy], server: ScriptedServer
) -> None:
    bucket, proxy = proxied_bucket
    proxy.cut()
    result = CliRunner().invoke(
        cli, ["run", str(SAMPLES), "-o", f"s3://{bucket}/out", "--endpoint", server.url]
    )
    assert result.exit_code == 5, result.output
    assert "unreachable" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert server.count() == 0
