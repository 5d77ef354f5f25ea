"""A real S3-protocol server for the tests (moto's), started once per session, and a new
bucket per test with the environment a user would have."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io import storage
from tests.helpers import KEY


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new bucket, with the environment a user would have: credentials and
    AWS_ENDPOINT_URL; and a cache folder of this test's own."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_url,
        "CAPTION_CACHE_DIR": str(tmp_path / "cache"),
        "MEMORIES_API_KEY": KEY,
    }.items():
        monkeypatch.setenv(name, value)
    name = f"b-{uuid.uuid4().hex[:12]}"
    client().create_bucket(Bucket=name)
    storage.configure({})  # no filesystem cached from another test
    yield name
    storage.configure({})


def client(**kw: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1", **kw
    )


def put_folder(bucket: str, prefix: str, folder: Path) -> list[str]:
    keys = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client().put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            keys.append(key)
    return keys


def keys_under(bucket: str, prefix: str) -> list[str]:
    listing = client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def bucket_results(bucket: str, prefix: str) -> list[dict]:
    rows = []
    for key in keys_under(bucket, prefix):
        if key.rsplit("/", 1)[-1].startswith("part-") and key.endswith(".parquet"):
            body = client().get_object(Bucket=bucket, Key=key)["Body"].read()
            rows += pq.read_table(pa.BufferReader(body)).to_pylist()
    return rows


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 server, which a test can cut (an
    outage: connections closed, new ones refused) and restore on the same port."""

    def __init__(self, target_url: str) -> None:
        host_port = target_url.split("://", 1)[1]
        self.target = (host_port.split(":")[0], int(host_port.split(":")[1]))
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()
        self.url = f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxied_bucket(
    bucket: str, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, CuttableProxy]]:
    """A bucket reached through a proxy the test can cut."""
    proxy = CuttableProxy(moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    # botocore's own retries (5 attempts, with backoff) make each call to a cut bucket
    # take 5-10 s before ours begin; one attempt keeps the tests short, ours still run.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage.configure({})
    try:
        yield bucket, proxy
    finally:
        proxy.cut()
        storage.configure({})
