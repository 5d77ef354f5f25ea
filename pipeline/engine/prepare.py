"""Manifest rows -> request bodies, a chunk at a time, off the event loop.

`Preparer.chunk` runs in a thread (`work.caption_rows` hands it over with
`asyncio.to_thread`): it reads and checks each image (bucket objects fetched 16 at a
time, concurrently), reduces it to the size the model bills it at when `resize` asks
(`engine/resize.py`, in a process pool sized to the cores: decoding holds the GIL), and splices
its base64 into the job's request body. A chunk stops at `CHUNK_BYTES` of bodies, so
memory is bounded by the rows in flight and a chunk or two, whatever the image sizes.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields

from pipeline.config.imagerules import ImageRule
from pipeline.config.settings import JobConfig
from pipeline.cost.images import billed_size, image_tokens
from pipeline.engine.resize import Reduced, reduce_image
from pipeline.errors import ApiError, RequestRejected
from pipeline.http.fetch import FetchRules, fetch_many
from pipeline.http.request import BodyTemplate
from pipeline.io.storage import is_remote, read_many
from pipeline.records import ROW_PROMPT, ManifestRow, ResultRow
from pipeline.sources.images import LoadedImage, is_url, load_image

log = logging.getLogger(__name__)

CHUNK_BYTES = 32_000_000  # large images: fewer rows per chunk, memory stays bounded
REMOTE_GROUP = 16  # bucket objects fetched at once


@dataclass(slots=True)
class Prepared:
    """A row ready to send (`body`), or already decided (`rejected`: a bad image)."""

    row: ManifestRow
    started: float
    body: bytes = b""
    width: int | None = None
    height: int | None = None
    rejected: ResultRow | None = None
    sha256: str | None = None  # of the bytes as read (none for a URL sent as one)

    def describe(self, row: ResultRow) -> ResultRow:
        """`row` with what is known of the image: its size and its bytes' digest."""
        row.image_width, row.image_height = self.width, self.height
        row.source_sha256 = self.sha256
        return row


@dataclass(slots=True)
class _Loaded:
    row: ManifestRow
    started: float
    image: LoadedImage | None = None
    rejected: ResultRow | None = None
    target: tuple[int, int] | None = None  # reduce to this size before sending


def now_ms() -> int:
    return int(time.time() * 1000)


def error_row(row: ManifestRow, exc: ApiError, started: float, kind: str) -> ResultRow:
    """A row that ends as an error without an answer."""
    log.debug("row %s failed: %s", row.id, exc.message)
    return ResultRow(
        id=row.id,
        source=row.source,
        status="error",
        attempts=0,
        latency_s=time.perf_counter() - started,
        finished_at_ms=now_ms(),
        http_status=exc.http_status,
        error=exc.message,
        error_kind=kind,
        job_level=exc.job_level,
    )


@dataclass(slots=True)
class Sizes:
    """Bytes of the images read, and of what was made of them for sending."""

    read: int = 0
    reduced_from: int = 0  # of the images reduced: their bytes before,
    reduced_to: int = 0  # and after
    reduced: int = 0

    def __iadd__(self, other: Sizes) -> Sizes:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


class Preparer:
    def __init__(self, config: JobConfig) -> None:
        req = config.request
        self.body = BodyTemplate.for_request(req)
        self.max_bytes = int(config.limits.max_image_mb * 1_000_000)
        self.rule: ImageRule | None = config.prices[req.model].image
        self.detail = req.detail
        self.resize = req.resize
        self.fetch_urls = req.fetch_urls
        limits = config.limits
        self.fetch_rules = FetchRules(
            self.max_bytes + 1,
            timeout_s=config.endpoint.timeout,
            attempts=limits.max_attempts,
            max_retry_after=limits.max_retry_after,
            concurrency=REMOTE_GROUP,
        )
        self.sizes = Sizes()
        self._pool: ProcessPoolExecutor | None = None
        self._workers = os.cpu_count() or 1
        self._said_urls = False

    @property
    def resizing(self) -> bool:
        return self.resize != "off"

    # -- one row ------------------------------------------------------------------------

    def target(self, width: int, height: int) -> tuple[int, int] | None:
        """The size to send an image at, or None for as it is (never larger)."""
        if self.resize == "model":
            if self.rule is None:
                return None  # no image rule for this model: nothing to go by
            size = billed_size(self.rule, width, height, self.detail)
            same = image_tokens(self.rule, *size, self.detail) == image_tokens(
                self.rule, width, height, self.detail
            )
            if not same:  # never bill differently from the original; not seen in tests
                log.warning("%dx%d: sent as it is; its reduced size bills otherwise", width, height)
                return None
        else:
            assert isinstance(self.resize, int)
            scale = min(1.0, self.resize / max(width, height))
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return size if size != (width, height) else None

    def load(self, row: ManifestRow, fetched: bytes | BaseException | None) -> _Loaded:
        started = time.perf_counter()
        try:
            image = load_image(row.source, self.max_bytes, fetched)
        except RequestRejected as exc:
            return _Loaded(row, started, rejected=error_row(row, exc, started, "invalid_image"))
        loaded = _Loaded(row, started, image)
        if image.url is not None:
            if self.resizing and not self._said_urls:
                self._said_urls = True
                log.warning(
                    "http(s) images are sent as URLs, not resized: --fetch-urls downloads them"
                )
            return loaded
        self.sizes.read += len(image.data)
        if self.resizing and image.width and image.height:
            loaded.target = self.target(image.width, image.height)
        return loaded

    def finish(self, loaded: _Loaded, reduced: Reduced | None) -> Prepared:
        row, started = loaded.row, loaded.started
        if loaded.rejected is not None:
            return Prepared(row, started, rejected=loaded.rejected)
        image = loaded.image
        assert image is not None
        width = image.width or _as_int(row.extra.get("width"))
        height = image.height or _as_int(row.extra.get("height"))
        prompt = row.extra.get(ROW_PROMPT)  # a row's own prompt (a judge's), else the job's
        prompt = prompt if isinstance(prompt, str) and prompt else None
        if image.url is not None:
            body = self.body.with_url(image.url, prompt)
        elif reduced is not None:
            self.sizes.reduced += 1
            self.sizes.reduced_from += len(image.data)
            self.sizes.reduced_to += len(reduced.data)
            body = self.body.with_data(reduced.mime, base64.b64encode(reduced.data), prompt)
        else:
            body = self.body.with_data(image.mime, base64.b64encode(image.data), prompt)
        digest = None if image.url is not None else hashlib.sha256(image.data).hexdigest()[:16]
        return Prepared(row, started, body=body, width=width, height=height, sha256=digest)

    # -- a chunk ------------------------------------------------------------------------

    def chunk(self, rows: Iterator[ManifestRow], size: int) -> list[Prepared]:
        """The next `size` rows, prepared, or fewer once their bodies reach CHUNK_BYTES.
        Blocking: run in a thread. Empty at the end of the rows."""
        chunk: list[Prepared] = []
        held = 0
        pending = itertools.islice(rows, size)
        for row in pending:
            if not self.resizing and not self._fetched(row.source):  # the common case, lean
                prepared = self.finish(self.load(row, None), None)
                chunk.append(prepared)
                held += len(prepared.body)
                if held >= CHUNK_BYTES:
                    break
                continue
            group = [row]
            if self._fetched(row.source):
                group += itertools.islice(pending, REMOTE_GROUP - 1)
            elif self.resizing:
                group += itertools.islice(pending, 2 * self._workers - 1)
            # Bucket objects and fetched URLs a group at a time, concurrently: one by one,
            # each would wait a round trip.
            fetched = self._fetch([r.source for r in group])
            loaded = [self.load(r, fetched.get(r.source)) for r in group]
            reduced = self._reduce([item for item in loaded if item.target is not None])
            for item in loaded:
                prepared = self.finish(item, reduced.get(id(item)))
                chunk.append(prepared)
                held += len(prepared.body)
            if held >= CHUNK_BYTES:
                break
        return chunk

    def _fetched(self, source: str) -> bool:
        """Whether a source's bytes come over the network: a bucket object, or an
        http(s) image with --fetch-urls (else the endpoint fetches the URL itself)."""
        return is_remote(source) or (self.fetch_urls and is_url(source))

    def _fetch(self, sources: list[str]) -> dict[str, bytes | BaseException]:
        """The bytes of the group's bucket objects and fetched URLs (one more than the
        cap, to tell an image over it), or why each could not be read."""
        objects = [s for s in sources if is_remote(s)]
        urls = [s for s in sources if self.fetch_urls and is_url(s)]
        fetched = read_many(objects, limit=self.max_bytes + 1) if objects else {}
        fetched.update(zip(urls, fetch_many(urls, self.fetch_rules), strict=True))
        return fetched

    def _reduce(self, items: list[_Loaded]) -> dict[int, Reduced | None]:
        """Reduce images on every core at once; {id(item): the reduced image or None}."""
        if not items:
            return {}
        jobs = [(item.image.data, item.target) for item in items if item.image and item.target]
        if len(jobs) == 1 or self._workers == 1:
            results = [reduce_image(*job) for job in jobs]
        else:
            if self._pool is None:
                # forkserver: workers are not forked from a process running threads.
                context = multiprocessing.get_context("forkserver")
                self._pool = ProcessPoolExecutor(self._workers, mp_context=context)
            results = list(self._pool.map(reduce_image, *zip(*jobs, strict=True)))
        return {id(item): result for item, result in zip(items, results, strict=True)}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, float) and value > 0 and value.is_integer():
        return int(value)
    return None
