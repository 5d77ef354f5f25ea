"""Buckets, against a real S3-protocol server (moto's, started here on a free port): a
prefix or a list in a bucket as the source, an output folder in a bucket, resume after
kill -9 from the same machine and from another, a forbidden object, two runs racing,
and a missing extra."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

pytest.importorskip("s3fs", reason="the cloud extra: pip install 'caption[cloud]'")
boto3 = pytest.importorskip("boto3")

from pipeline.cli import cli  # noqa: E402
from pipeline.io import storage  # noqa: E402
from tests.buckets import bucket_results, client, keys_under, put_folder  # noqa: E402
from tests.fakes import ScriptedServer  # noqa: E402
from tests.helpers import KEY, SAMPLES, distinct_images, free_port, spawn_run  # noqa: E402


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", *args, "--quiet"])
    return result.exit_code, result.output


def test_a_bucket_prefix_into_a_bucket_folder_resumes_from_the_bucket_alone(
    bucket: str, server: ScriptedServer, tmp_path: Path
) -> None:
    put_folder(bucket, "imgs", SAMPLES)
    out = f"s3://{bucket}/out"
    code, output = run_cli(f"s3://{bucket}/imgs", "-o", out, "--endpoint", server.url)
    assert code == 0, output
    assert server.count() == 6
    keys = keys_under(bucket, "out")
    assert [k for k in keys if not k.startswith("out/.lock/")] == [
        "out/.caption/manifest.pq",
        "out/.caption/run.json",
        "out/part-00000.parquet",
    ]  # no journal
    (lock,) = [k for k in keys if k.startswith("out/.lock/")]  # the newest generation,
    body = json.loads(client().get_object(Bucket=bucket, Key=lock)["Body"].read())
    assert body["released"] is True  # released: the next run takes the next number
    rows = bucket_results(bucket, "out")
    assert sorted(r["source"] for r in rows) == sorted(
        f"s3://{bucket}/imgs/{p.relative_to(SAMPLES).as_posix()}"
        for p in SAMPLES.rglob("*")
        if p.is_file()
    )
    assert all(r["status"] == "ok" for r in rows)
    meta = json.loads(
        client().get_object(Bucket=bucket, Key="out/.caption/run.json")["Body"].read()
    )
    assert KEY not in json.dumps(meta)

    shutil.rmtree(tmp_path / "cache")  # another machine: nothing but the bucket
    code, output = run_cli(f"s3://{bucket}/imgs/", "-o", out, "--endpoint", server.url)
    assert code == 0, output
    assert "(6 already done, 0 pending)" in output
    assert server.count() == 6
    result = CliRunner().invoke(cli, ["status", out, "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert (status["output"], status["ok"], status["pending"]) == (out, 6, 0)
    result = CliRunner().invoke(cli, ["export", out, "-o", str(tmp_path / "all.csv")])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "all.csv").read_text().splitlines()) == 7
    # The estimate takes the bucket folder's own job (from its run.json alone).
    result = CliRunner().invoke(cli, ["estimate", f"s3://{bucket}/imgs/", "-o", out, "--json"])
    assert result.exit_code == 0, result.output
    estimate = json.loads(result.stdout)
    assert estimate["models"][0]["images"] == 0  # all 6 already done
    assert estimate["expected_basis"] == f"mean of 6 rows already answered in {out}"


def test_a_bucket_folder_of_the_previous_layout_loses_its_parquet_named_manifest(
    bucket: str, server: ScriptedServer, tmp_path: Path
) -> None:
    """The previous version kept `.caption/manifest.parquet`, which `**/*.parquet` globs
    read as results: on the next run the bucket holds it as `manifest.pq` only."""
    put_folder(bucket, "imgs", SAMPLES)
    out = f"s3://{bucket}/out"
    assert run_cli(f"s3://{bucket}/imgs", "-o", out, "--endpoint", server.url)[0] == 0
    s3 = client()
    s3.copy_object(
        Bucket=bucket,
        Key="out/.caption/manifest.parquet",
        CopySource={"Bucket": bucket, "Key": "out/.caption/manifest.pq"},
    )
    s3.delete_object(Bucket=bucket, Key="out/.caption/manifest.pq")
    shutil.rmtree(tmp_path / "cache")  # another machine: the bucket as the old version left it
    code, output = run_cli(f"s3://{bucket}/imgs", "-o", out, "--endpoint", server.url)
    assert code == 0, output
    assert server.count() == 6  # nothing sent again
    assert [k for k in keys_under(bucket, "out/.caption")] == [
        "out/.caption/manifest.pq",
        "out/.caption/run.json",
    ]


def test_a_list_file_in_a_bucket_and_globs(
    bucket: str, server: ScriptedServer, tmp_path: Path
) -> None:
    put_folder(bucket, "imgs", SAMPLES)
    listing = f"image,label\nsunset.jpg,sky\n./nested/panorama.png,wide\ns3://{bucket}/imgs/icon.gif,icon\n"
    client().put_object(Bucket=bucket, Key="imgs/list.csv", Body=listing.encode())
    out = tmp_path / "out"
    code, output = run_cli(f"s3://{bucket}/imgs/list.csv", "-o", str(out), "--endpoint", server.url)
    assert code == 0, output
    manifest = pq.read_table(out / ".caption/manifest.pq").to_pylist()
    assert [(r["source"], r["label"]) for r in manifest] == [
        (f"s3://{bucket}/imgs/sunset.jpg", "sky"),
        (f"s3://{bucket}/imgs/nested/panorama.png", "wide"),
        (f"s3://{bucket}/imgs/icon.gif", "icon"),
    ]
    result = CliRunner().invoke(cli, ["estimate", f"s3://{bucket}/imgs/*.jpg", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["models"][0]["images"] == 2  # poster.jpg and sunset.jpg
    assert report["sizes"]["headers"] == 2  # read from the objects' first bytes


def test_a_missing_object_is_an_error_row_with_a_message(
    bucket: str, server: ScriptedServer, tmp_path: Path
) -> None:
    put_folder(bucket, "imgs", SAMPLES)
    listing = f"s3://{bucket}/imgs/sunset.jpg\ns3://{bucket}/imgs/gone.png\n"
    (tmp_path / "list.txt").write_text(listing)
    code, _ = run_cli(
        str(tmp_path / "list.txt"), "-o", str(tmp_path / "out"), "--endpoint", server.url
    )
    assert code == 1
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert rows["sunset.jpg"]["status"] == "ok"
    assert rows["gone.png"]["error"] == f"s3://{bucket}/imgs/gone.png: no such object"
    assert server.count() == 1


@pytest.mark.timeout(90)
def test_a_forbidden_object_is_an_error_row_with_a_message(
    tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that checks permissions: moto with IAM on, a user denied one object."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "40"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        root = {"endpoint_url": url, "region_name": "us-east-1"}
        root |= {"aws_access_key_id": "root", "aws_secret_access_key": "root"}
        s3, iam = boto3.client("s3", **root), boto3.client("iam", **root)
        s3.create_bucket(Bucket="locked")
        for name in ("sunset.jpg", "icon.gif"):
            s3.put_object(Bucket="locked", Key=f"imgs/{name}", Body=(SAMPLES / name).read_bytes())
        iam.create_user(UserName="labeler")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {
                    "Effect": "Deny",
                    "Action": "s3:GetObject",
                    "Resource": "arn:aws:s3:::locked/imgs/icon.gif",
                },
            ],
        }
        iam.put_user_policy(UserName="labeler", PolicyName="p", PolicyDocument=json.dumps(policy))
        access = iam.create_access_key(UserName="labeler")["AccessKey"]
        for _ in range(60):  # use up the unauthenticated calls: permissions apply from here
            try:
                s3.list_buckets()
            except Exception:
                break
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("MEMORIES_API_KEY", KEY)
        monkeypatch.setenv("CAPTION_CACHE_DIR", str(tmp_path / "cache"))
        options = json.dumps({"key": access["AccessKeyId"], "secret": access["SecretAccessKey"]})
        result = CliRunner().invoke(
            cli,
            ["--storage-options", options, "run", "s3://locked/imgs", "-o", str(tmp_path / "out"),
             "--endpoint", server.url, "--quiet"],
        )  # fmt: skip
        assert result.exit_code == 1, result.output
        assert access["SecretAccessKey"] not in result.output
        rows = {r["source"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
        assert rows["s3://locked/imgs/sunset.jpg"]["status"] == "ok"
        denied = rows["s3://locked/imgs/icon.gif"]
        assert (denied["status"], denied["error_kind"]) == ("error", "invalid_image")
        assert (
            denied["error"]
            == "s3://locked/imgs/icon.gif: access denied (forbidden by the bucket's permissions)"
        )
        assert server.count() == 1
    finally:
        storage.configure({})
        proc.terminate()
        proc.wait()


@pytest.mark.timeout(120)
def test_kill_9_into_a_bucket_resumes_on_this_machine_and_on_another(
    bucket: str, server: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPTION_LOCK_LEASE_S", "3")  # a killed run's lock frees in 3 s
    put_folder(bucket, "imgs", distinct_images(tmp_path / "imgs", 40))
    out = f"s3://{bucket}/out"
    args = (f"s3://{bucket}/imgs", "-o", out, "--endpoint", server.url, "--concurrency", "2")
    # Answers go slowly enough for the mirror to push (every 1 s here) before the kill.
    server.delay = 0.3
    proc = spawn_run(*args)
    deadline = time.monotonic() + 60
    while server.count() < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)  # at least one push after the 20th answer
    answered_before = set(server.answered)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    (lock,) = keys_under(bucket, "out/.lock/")  # the killed run's lock stays
    # As if the killed run had been on another machine (on this one, a holder whose
    # process is gone is taken over at once: tests/test_cloud_safety.py).
    held = json.loads(client().get_object(Bucket=bucket, Key=lock)["Body"].read())
    held["host"] = "another-machine"
    client().put_object(Bucket=bucket, Key=lock, Body=json.dumps(held).encode())

    code, output = run_cli(*args)  # at once: the lease has not run out
    assert code == 2
    assert "is in use by another caption run" in output
    held["expires_at"] = time.time() - 1  # as if its lease had run out since
    client().put_object(Bucket=bucket, Key=lock, Body=json.dumps(held).encode())

    shutil.rmtree(tmp_path / "cache")  # another machine: the local journal is gone
    server.seen.clear()
    server.delay = 0
    code, output = run_cli(*args)
    assert code == 0, output
    resent = set(server.requests_by_digest()) & answered_before
    # At most what was answered since the last push (every 1 s here; 2 at once at 0.3 s
    # each is under 7 a second, 9 counting the push's own time) and what was in flight.
    assert len(answered_before) >= 20
    assert len(resent) <= 9 + 2
    rows = bucket_results(bucket, "out")
    assert len(rows) == 40
    assert len({r["id"] for r in rows}) == 40
    assert not [k for k in keys_under(bucket, "out") if k.endswith(".journal.jsonl")]


@pytest.mark.timeout(120)
def test_two_runs_racing_for_one_bucket_folder(
    bucket: str, server: ScriptedServer, tmp_path: Path
) -> None:
    put_folder(bucket, "imgs", SAMPLES)
    server.delay = 0.3
    out = f"s3://{bucket}/out"
    args = (f"s3://{bucket}/imgs", "-o", out, "--endpoint", server.url, "--concurrency", "1")
    procs = [spawn_run(*args) for _ in range(2)]
    results = [p.communicate(timeout=90) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    loser = next(err for p, (_, err) in zip(procs, results, strict=True) if p.returncode == 2)
    assert "is in use by another caption run" in loser
    assert server.count() == 6  # each image sent once
    assert len(bucket_results(bucket, "out")) == 6


def test_a_missing_extra_names_it(
    bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if caption[cloud] were not installed
    storage.configure({})
    code, output = run_cli("s3://any/imgs", "-o", str(tmp_path / "out"), "--endpoint", "fake")
    assert code == 2
    assert (
        "needs s3fs, which is not installed; install the extra: pip install 'caption[cloud]'"
        in output
    )
    code, output = run_cli(str(SAMPLES), "-o", "ftp://host/out", "--endpoint", "fake")
    assert code == 2
    assert "unsupported scheme ftp://" in output


def test_a_manifest_written_to_a_bucket_is_a_source(
    bucket: str, server: ScriptedServer, tmp_path: Path
) -> None:
    put_folder(bucket, "imgs", SAMPLES)
    result = CliRunner().invoke(
        cli, ["ingest", f"s3://{bucket}/imgs", "-o", f"s3://{bucket}/m.parquet"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.endswith(f"-> s3://{bucket}/m.parquet\n")
    code, output = run_cli(
        f"s3://{bucket}/m.parquet", "-o", str(tmp_path / "out"), "--endpoint", server.url
    )
    assert code == 0, output
    assert server.count() == 6


def test_an_object_replaced_at_the_same_key_is_captioned_again(
    bucket: str, server: ScriptedServer, tmp_path: Path
) -> None:
    from PIL import Image

    put_folder(bucket, "imgs", SAMPLES)
    out = tmp_path / "out"
    args = (f"s3://{bucket}/imgs", "-o", str(out), "--endpoint", server.url)
    assert run_cli(*args)[0] == 0
    first = {r["source"]: r for r in pq.read_table(out / "part-00000.parquet").to_pylist()}
    photo = tmp_path / "new.jpg"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(photo)
    key = f"s3://{bucket}/imgs/sunset.jpg"
    client().put_object(Bucket=bucket, Key="imgs/sunset.jpg", Body=photo.read_bytes())
    result = CliRunner().invoke(cli, ["run", *args])
    assert result.exit_code == 0, result.output
    assert "1 new, 1 of them changed since the last run" in result.output
    assert server.count() == 7
    rows = {
        r["source"]: r for f in out.glob("part-*.parquet") for r in pq.read_table(f).to_pylist()
    }
    assert len(rows) == 6
    assert rows[key]["caption"] != first[key]["caption"]
    # Written again with the same bytes, the object keeps its ETag: nothing is sent.
    client().put_object(Bucket=bucket, Key="imgs/sunset.jpg", Body=photo.read_bytes())
    assert run_cli(*args)[0] == 0
    assert server.count() == 7
