"""Image sizes for the estimate, without decoding pixels: local headers (on every core once
there are enough files), the manifest's `width`/`height` columns, or the first bytes of a
URL (`--probe-urls`, an HTTP Range request)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from pipeline.config.imagerules import ImageRule
from pipeline.cost.images import billed_size
from pipeline.errors import RequestRejected, UsageError
from pipeline.http.fetch import FetchRules, fetch_many
from pipeline.io.storage import is_remote, read_many
from pipeline.sources.images import HEADER_BYTES, header_size, local_size, object_size

PROBE_TIMEOUT_S = 20.0


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--assume-size {text!r}: must be WIDTHxHEIGHT, e.g. 1024x768") from None
    if w <= 0 or h <= 0:
        raise UsageError(f"--assume-size {text!r}: width and height must be positive")
    return w, h


def column_ints(batch: pa.RecordBatch, name: str) -> list[int | None]:
    if name not in batch.schema.names:
        return [None] * batch.num_rows
    out: list[int | None] = []
    for v in batch.column(name).to_pylist():
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            out.append(None)
        else:
            out.append(int(v))
    return out


def probe_sizes(urls: list[str], concurrency: int) -> list[tuple[int, int] | None]:
    """Each URL's pixel size from its first bytes (an HTTP Range request), or None."""
    rules = FetchRules(HEADER_BYTES, PROBE_TIMEOUT_S, concurrency=concurrency, first_bytes=True)
    heads = fetch_many(urls, rules)
    return [header_size(data) if isinstance(data, bytes) else None for data in heads]


Found = tuple[int, int, int | None]  # width, height, bytes (None: not known)


def _sizes_of(paths: list[str], max_bytes: int) -> list[Found | str]:
    """Each image's size from its header (and its file's bytes), or why it cannot be sent.
    Bucket objects are read by their first 64 KiB (range reads, many at once), never
    whole, and their bytes are not known."""
    remote = [p for p in paths if is_remote(p)]
    heads = read_many(remote, limit=HEADER_BYTES) if remote else {}
    out: list[Found | str] = []
    for path in paths:
        try:
            if path in heads:
                out.append((*object_size(path, heads[path], max_bytes), None))
            else:
                out.append((*local_size(path, max_bytes), os.path.getsize(path)))
        except RequestRejected as exc:
            out.append(exc.message.removeprefix(f"{path}: "))
    return out


class HeaderReader:
    """Reads local image headers, on every core once there are enough of them."""

    CHUNK = 2048

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pool: ProcessPoolExecutor | None = None

    def sizes(self, paths: list[str]) -> Iterator[Found | str]:
        workers = os.cpu_count() or 1
        if len(paths) < 2 * self.CHUNK or workers == 1 or any(map(is_remote, paths)):
            yield from _sizes_of(paths, self.max_bytes)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=workers)
        chunks = [paths[i : i + self.CHUNK] for i in range(0, len(paths), self.CHUNK)]
        for result in self._pool.map(_sizes_of, chunks, [self.max_bytes] * len(chunks)):
            yield from result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


# JPEG at quality 90 of a photo, in bytes per pixel: 0.19 measured on bench/bandwidth.py's
# camera-like photos at 1024x768; real photos with more detail run to about 0.3.
JPEG_BYTES_PER_PIXEL = 0.3


@dataclass(slots=True)
class Uploads:
    """The bytes a job would upload (base64, as sent), as the images are and with
    `--resize model`, for the images whose file size is known."""

    rule: ImageRule | None
    detail: str | None
    as_is: int = 0
    resized: float = 0.0
    unknown: int = 0  # URLs and bucket objects: their bytes are not read

    def add(self, width: int, height: int, nbytes: int | None) -> None:
        if nbytes is None:
            self.unknown += 1
            return
        sent = 4 * -(-nbytes // 3)
        self.as_is += sent
        if self.rule is None:
            self.resized += sent
            return
        w, h = billed_size(self.rule, width, height, self.detail)
        smaller = 4 / 3 * w * h * JPEG_BYTES_PER_PIXEL if (w, h) != (width, height) else sent
        self.resized += min(sent, smaller)

    def line(self) -> str:
        unknown = (
            f"; {self.unknown} image(s) of unknown size (URLs, bucket objects) not counted"
            if self.unknown
            else ""
        )
        return (
            f"upload: {self.as_is / 1e6:.1f} MB as the images are; about "
            f"{self.resized / 1e6:.1f} MB with --resize model (the size each is billed at, "
            f"JPEG quality 90){unknown}"
        )
