"""The Ray executor on a local Ray (2 CPUs, started once for this module): the same output
as the local executor, exactly once across a worker's kill -9, one rate limit and one
budget for all workers, and a local folder refused on a remote cluster."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'caption[ray]'")

from pipeline.cli import cli  # noqa: E402
from pipeline.errors import UsageError  # noqa: E402
from pipeline.executors import ExecutorSpec  # noqa: E402
from pipeline.executors.ray import check_cluster  # noqa: E402
from pipeline.io import storage  # noqa: E402
from pipeline.testing.fake_server import FakeEndpoint, FakeOptions  # noqa: E402
from tests.buckets import CuttableProxy, bucket_results, keys_under, put_folder  # noqa: E402
from tests.fakes import ScriptedServer  # noqa: E402
from tests.helpers import SAMPLES, distinct_images  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", *args, "--quiet"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return result.exit_code, f"{result.output}\n{result.exception!r}"
    return result.exit_code, result.output


def rows(out: Path) -> dict[str, dict]:
    table = pq.read_table(out).to_pylist()
    by_id = {r["id"]: r for r in table}
    assert len(by_id) == len(table), "an id has more than one row"
    return by_id


def test_the_same_output_as_the_local_executor(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    images = distinct_images(tmp_path / "imgs", 40)
    assert run_cli(str(images), "-o", str(tmp_path / "local"), "--endpoint", server.url)[0] == 0
    code, output = run_cli(
        str(images), "-o", str(tmp_path / "ray"), "--endpoint", server.url,
        "--executor", "ray", "--workers", "2", "--rows-per-shard", "5",
    )  # fmt: skip
    assert code == 0, output
    assert "40 ok, 0 errors of 40 new" in output
    local, on_ray = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert set(local) == set(on_ray)
    fields = ("status", "caption", "prompt_tokens", "completion_tokens", "cost_usd")
    assert all({f: local[i][f] for f in fields} == {f: on_ray[i][f] for f in fields} for i in local)
    # The blocks' own shards, full ones (small ones are merged when the run ends).
    assert len(list((tmp_path / "ray").glob("part-r*.parquet"))) >= 2
    code, output = run_cli(
        str(images), "-o", str(tmp_path / "ray"), "--endpoint", server.url, "--executor", "ray"
    )
    assert "(40 already done, 0 pending)" in output


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_block_resends_only_what_was_in_flight(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    images = distinct_images(tmp_path / "imgs", 48)
    server.delay = 0.15
    killed: list[int] = []

    def kill_a_worker(received: int) -> None:
        if received == 12 and not killed:
            found = subprocess.run(
                ["pgrep", "-f", "ray::run_block"], capture_output=True, text=True
            )
            pids = [int(p) for p in found.stdout.split()]
            if pids:
                killed.append(pids[0])
                os.kill(pids[0], signal.SIGKILL)

    server.on_request = kill_a_worker
    code, output = run_cli(
        str(images), "-o", str(tmp_path / "out"), "--endpoint", server.url,
        "--executor", "ray", "--workers", "2", "--concurrency", "2",
    )  # fmt: skip
    assert killed, "no Ray worker was found to kill"
    assert code == 0, output
    assert len(rows(tmp_path / "out")) == 48
    # The rows the killed attempt saved were paid by this run: counted, not left pending.
    assert "48 ok, 0 errors of 48 new (0 already done, 0 pending)" in output
    sent = server.requests_by_digest()
    twice = [d for d, n in sent.items() if n > 1]
    # One request in flight per worker (concurrency 2 over 2 workers): at most that one
    # row of the killed worker is paid twice, and Ray retried its block.
    assert len(twice) <= 1, twice
    assert sum(sent.values()) <= 49


class Fake:
    """The fake endpoint with a server-side rate cap, in a thread of its own."""

    def __init__(self, options: FakeOptions) -> None:
        self.options = options
        self.url = ""
        self.stats: dict[str, int] = {}
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> Fake:
        threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True).start()
        self._ready.wait(10)
        return self

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with FakeEndpoint(self.options) as fake:
            self.url, self._loop = fake.url, asyncio.get_running_loop()
            self._ready.set()
            await self._stop.wait()

    def read_stats(self) -> dict[str, int]:
        import urllib.request

        with urllib.request.urlopen(self.url.replace("/chat/completions", "/stats")) as r:
            return json.loads(r.read())

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)


@pytest.mark.timeout(120)
def test_one_rate_limit_for_all_workers(tmp_path: Path, key: str) -> None:
    """A server allowing 20 requests a second and --rpm 1200 for the job: with a limit
    per worker, two workers would send 40 a second and half would be refused."""
    images = distinct_images(tmp_path / "imgs", 60)
    with Fake(FakeOptions(rate_limit=20)) as fake:
        code, output = run_cli(
            str(images), "-o", str(tmp_path / "out"), "--endpoint", fake.url,
            "--executor", "ray", "--workers", "2", "--rpm", "1200", "--concurrency", "8",
        )  # fmt: skip
        stats = fake.read_stats()
    assert code == 0, output
    assert len(rows(tmp_path / "out")) == 60
    assert stats["refused"] <= 0.03 * stats["requests"], stats


def test_one_budget_for_all_workers(tmp_path: Path, server: ScriptedServer, key: str) -> None:
    images = distinct_images(tmp_path / "imgs", 40)
    cap = 0.01  # a few rows' worth
    code, output = run_cli(
        str(images), "-o", str(tmp_path / "out"), "--endpoint", server.url, "--max-tokens", "50",
        "--executor", "ray", "--workers", "2", "--max-cost", str(cap),
    )  # fmt: skip
    assert code == 4, output
    assert "budget cap" in output
    spent = sum(r["cost_usd"] for r in rows(tmp_path / "out").values())
    assert 0 < spent <= cap
    assert server.count() < 40


def test_a_local_folder_on_a_remote_cluster_is_refused_before_anything_is_sent(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    code, output = run_cli(
        str(SAMPLES), "-o", str(tmp_path / "out"), "--endpoint", server.url,
        "--executor", "ray", "--ray-address", "ray://10.20.30.40:10001",
    )  # fmt: skip
    assert code == 2
    assert "is a local path, which the cluster's nodes do not see" in output
    assert f"the images of {SAMPLES} are on this machine too" in output
    assert "--shared-fs" in output
    assert server.count() == 0
    assert not (tmp_path / "out").exists()


def test_on_a_remote_cluster_buckets_need_no_shared_path_but_local_images_do() -> None:
    remote = ExecutorSpec("ray", "ray://10.20.30.40:10001")
    check_cluster(remote, "s3://b/out", ["s3://b/imgs", "https://x/a.png"])  # no refusal
    with pytest.raises(UsageError, match=f"the images of {SAMPLES} are on this machine"):
        check_cluster(remote, "s3://b/out", [str(SAMPLES)])
    check_cluster(
        ExecutorSpec("ray", "ray://10.20.30.40:10001", shared_fs=True), "/mnt/out", [str(SAMPLES)]
    )
    check_cluster(ExecutorSpec("ray", "127.0.0.1:6379"), "/tmp/out", [str(SAMPLES)])  # local
    # A head on this machine, by the address Ray gives it (the node's IP): local too.
    here = ray.get_runtime_context().gcs_address
    check_cluster(ExecutorSpec("ray", here), "/tmp/out", [str(SAMPLES)])


@pytest.mark.timeout(180)
def test_a_bucket_folder_written_by_the_tasks_and_a_worker_killed_mid_block(
    tmp_path: Path,
    server: ScriptedServer,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each task writes its block to the bucket itself, as on a remote cluster; a retried
    task starts with no local files (another node) and resumes from the bucket."""
    monkeypatch.setenv("CAPTION_LOCK_LEASE_S", "3")  # pushes every second
    # The workers started before this test's environment: the storage options reach them.
    options = {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": os.environ["AWS_ENDPOINT_URL"],
    }
    put_folder(bucket, "imgs", distinct_images(tmp_path / "imgs", 40))
    server.delay = 0.2
    killed: list[int] = []

    def kill_a_worker(received: int) -> None:
        if received == 16 and not killed:
            found = subprocess.run(
                ["pgrep", "-f", "ray::run_block"], capture_output=True, text=True
            )
            if pids := [int(p) for p in found.stdout.split()]:
                killed.append(pids[0])
                os.kill(pids[0], signal.SIGKILL)

    server.on_request = kill_a_worker
    result = CliRunner().invoke(cli, [
        "--storage-options", json.dumps(options), "run", f"s3://{bucket}/imgs",
        "-o", f"s3://{bucket}/out", "--endpoint", server.url, "--quiet",
        "--executor", "ray", "--workers", "2", "--concurrency", "2",
    ])  # fmt: skip
    code, output = result.exit_code, f"{result.output}\n{result.exception!r}"
    assert killed, "no Ray worker was found to kill"
    assert code == 0, output
    results = bucket_results(bucket, "out")
    assert len({r["id"] for r in results}) == len(results) == 40
    assert not [k for k in keys_under(bucket, "out") if k.endswith(".journal.jsonl")]
    twice = [d for d, n in server.requests_by_digest().items() if n > 1]
    # What the killed worker answered since its last push (every second here: at 0.2 s a
    # row, up to 5) and the row in flight. Without journal copies in the bucket it was
    # every row of its block so far (8 or 9).
    assert len(twice) <= 6, twice


@pytest.mark.timeout(180)
def test_a_killed_driver_is_resumed_by_running_the_command_again(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """The driver, a process of its own, joins this module's Ray (as a driver joins a
    cluster) and is killed mid-run; Ray ends its tasks, and the rerun resumes."""
    images = distinct_images(tmp_path / "imgs", 48)
    server.delay = 0.2
    args = [str(images), "-o", str(tmp_path / "out"), "--endpoint", server.url]
    args += ["--executor", "ray", "--workers", "2", "--concurrency", "2"]
    cluster = ["--ray-address", ray.get_runtime_context().gcs_address]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", *args, *cluster, "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while server.count() < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    before = server.requests_by_digest()
    assert 16 <= sum(before.values()) < 48
    server.delay = 0
    code, output = run_cli(*args)
    assert code == 0, output
    assert len(rows(tmp_path / "out")) == 48
    sent = server.requests_by_digest()
    # Its workers folded their journals as Ray shut them down: at most the requests in
    # flight at the kill (one per worker) are sent again.
    assert sum(sent.values()) <= 48 + 2


@pytest.mark.timeout(180)
def test_a_bucket_gone_mid_run_stops_every_task(
    tmp_path: Path,
    proxied_bucket: tuple[str, CuttableProxy],
    server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The driver's lease cannot be renewed: the account stops leasing, so the tasks stop
    sending too, and the run ends with one line and exit 5."""
    bucket, proxy = proxied_bucket
    monkeypatch.setenv("CAPTION_LOCK_LEASE_S", "3")
    options = {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": proxy.url,
        # botocore's own retries make each call to the cut bucket take 5-10 s; ours remain
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    imgs = distinct_images(tmp_path / "imgs", 120)
    server.delay = 0.2
    server.on_request = lambda n: proxy.cut() if n == 8 else None
    result = CliRunner().invoke(cli, [
        "--storage-options", json.dumps(options), "run", str(imgs),
        "-o", f"s3://{bucket}/out", "--endpoint", server.url, "--quiet",
        "--executor", "ray", "--workers", "2", "--concurrency", "2",
    ])  # fmt: skip
    assert result.exit_code == 5, f"{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    assert bucket in result.output
    paid = server.count()
    assert paid < 120  # it stopped sending
    time.sleep(1.5)
    assert server.count() == paid  # and no task sends after the run ended

    # The tasks' answers the bucket never took were handed to the driver's mirror: the
    # rerun, once the bucket is back, pushes them and sends only the rest.
    server.on_request, server.delay = None, 0
    proxy.restore()
    storage.configure({})
    again = CliRunner().invoke(cli, [
        "run", str(imgs), "-o", f"s3://{bucket}/out", "--endpoint", server.url, "--quiet",
    ])  # fmt: skip
    assert again.exit_code == 0, f"{again.output}\n{again.exception!r}"
    results = bucket_results(bucket, "out")
    assert len({r["id"] for r in results}) == len(results) == 120
    twice = [d for d, n in server.requests_by_digest().items() if n > 1]
    assert len(twice) <= 4, twice  # at most what was in flight (2 workers x 2)


@pytest.mark.timeout(180)
def test_a_local_cluster_of_our_own_starts_without_rays_banners(tmp_path: Path) -> None:
    """Ray announces that it enabled token authentication on every new local cluster;
    caption owns that cluster, and its user should see only caption's own lines."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["RAY_ADDRESS"] = ""  # a cluster of its own, not this module's
    args = ["run", str(SAMPLES), "-o", str(tmp_path / "out"), "--endpoint", "fake"]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "--executor", "ray", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, result.stderr
    assert "Token authentication" not in result.stderr
    assert result.stdout.startswith("6 ok, 0 errors of 6 new")
