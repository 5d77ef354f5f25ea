"""Where bytes live: local paths and bucket URLs (`s3://`, `gs://`) behind one set of calls.

Every read of a source, listing of a prefix and atomic write goes through here. Local
paths use the OS directly (no fsspec import, no overhead); bucket URLs use fsspec with
s3fs or gcsfs, the `caption[cloud]` extra. Credentials come from each library's standard
chain (environment, profile, instance role); another S3 endpoint (MinIO, R2, a local test
server) from `AWS_ENDPOINT_URL`; anything else from `--storage-options` JSON. None of
them is ever logged or written anywhere.

A bucket has no rename: an atomic write there is one PUT of the whole object, which
becomes visible only complete. `create_exclusive` is a conditional PUT
(`If-None-Match: *`), the bucket's way to let exactly one writer create a name.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.errors import StorageError, UsageError, storage_error

# scheme -> (module that implements it, the extra that installs it)
SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "caption[cloud]"),
    "s3a": ("s3fs", "caption[cloud]"),
    "gs": ("gcsfs", "caption[cloud]"),
    "gcs": ("gcsfs", "caption[cloud]"),
}

_options: dict[str, Any] = {}
_filesystems: dict[str, Any] = {}
_lock = threading.Lock()


def scheme_of(path: str) -> str | None:
    head, sep, _ = path.partition("://")
    return head.lower() if sep and head.isalnum() else None


def is_remote(path: str) -> bool:
    """A bucket URL (s3://, gs://), as opposed to a local path or an http(s) URL."""
    return scheme_of(path) in SCHEMES


def check_scheme(path: str) -> None:
    """Refuse a URL scheme we cannot read, naming the ones we can."""
    scheme = scheme_of(path)
    if scheme is None or scheme in SCHEMES or scheme in ("http", "https", "file"):
        return
    raise UsageError(
        f"{path}: unsupported scheme {scheme}://; use a local path, an http(s) URL, or "
        "s3:// or gs:// (pip install 'caption[cloud]')"
    )


def configure(options: dict[str, Any]) -> None:
    """Storage options for every bucket (`--storage-options`), e.g. an endpoint or a
    profile. Passed to the filesystem as they are; never logged."""
    with _lock:
        _options.clear()
        _options.update(options)
        _filesystems.clear()


def options() -> dict[str, Any]:
    """The storage options in force (to hand to other processes: Ray tasks)."""
    with _lock:
        return dict(_options)


def filesystem(url: str) -> Any:
    """The fsspec filesystem of a bucket URL (one per scheme, shared), or a UsageError
    naming the extra to install."""
    scheme = scheme_of(url) or ""
    if scheme not in SCHEMES:
        raise UsageError(f"{url}: not a bucket URL (s3:// or gs://)")
    with _lock:
        if scheme not in _filesystems:
            module, extra = SCHEMES[scheme]
            try:
                import fsspec

                __import__(module)
            except ImportError:
                raise UsageError(
                    f"{url}: reading {scheme}:// needs {module}, which is not installed; "
                    f"install the extra: pip install '{extra}'"
                ) from None
            kwargs = dict(_options)
            if (
                module == "s3fs"
                and os.environ.get("AWS_ENDPOINT_URL")
                and "endpoint_url" not in kwargs
            ):
                # Older botocore ignores the standard variable; pass it on explicitly.
                kwargs["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
            _filesystems[scheme] = fsspec.filesystem(scheme, **kwargs)
        return _filesystems[scheme]


def _key(url: str) -> str:
    """The path fsspec wants: the URL without its scheme."""
    return url.split("://", 1)[1]


def join(base: str, *names: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(base, *names)


def name_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


# -- reading ------------------------------------------------------------------------------


def missing_or_forbidden(url: str, exc: BaseException) -> str:
    """One line saying why an object could not be read, without the library's noise."""
    if isinstance(exc, FileNotFoundError):
        return f"{url}: no such object"
    if isinstance(exc, PermissionError):
        return f"{url}: access denied (forbidden by the bucket's permissions)"
    return f"{url}: cannot read ({type(exc).__name__}: {str(exc)[:200]})"


def bucket_problem(url: str, exc: BaseException) -> str:
    """What went wrong with a bucket call, in words, from the error's type and the
    service's error code (never its message text): a missing bucket, access denied,
    the service unreachable, or the library's own one-line reason."""
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    code = _error_code(exc)
    if code == "NoSuchBucket":
        return f"no such bucket: {bucket}"
    if isinstance(exc, PermissionError) or code in ("AccessDenied", "Forbidden", "403"):
        return f"access denied to {bucket} (check the credentials and the bucket's policy)"
    if _is_unreachable(exc):
        return f"the storage service is unreachable ({type(exc).__name__}: {str(exc)[:160]})"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _error_code(exc: BaseException) -> str | None:
    """The S3 or GCS error code behind an exception, looked up along its causes."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            if code:
                return str(code)
        seen = seen.__cause__ or seen.__context__
    return None


def _is_unreachable(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    transport = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"}
    transport |= {"ClientConnectorError", "ServerDisconnectedError", "ConnectionClosedError"}
    return bool(names & transport) or isinstance(exc, ConnectionError | TimeoutError)


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """An object's bytes, or those in [start, end)."""
    if not is_remote(url):
        with open(url, "rb") as f:
            if start:
                f.seek(start)
            return f.read() if end is None else f.read(end - (start or 0))
    return filesystem(url).cat_file(_key(url), start=start, end=end)


def read_many(urls: list[str], limit: int | None = None) -> dict[str, bytes | BaseException]:
    """Many objects (or their first `limit` bytes), fetched concurrently: one round of
    requests, not one after another. A failure is returned in place of its bytes."""
    out: dict[str, bytes | BaseException] = {}
    by_scheme: dict[str, list[str]] = {}
    for url in urls:
        by_scheme.setdefault(scheme_of(url) or "", []).append(url)
    for group in by_scheme.values():
        fs = filesystem(group[0])
        keys = [_key(u) for u in group]
        if limit is None:
            whole = fs.cat(keys, on_error="return")
            results = [whole.get(k, FileNotFoundError(k)) for k in keys]
        else:
            results = fs.cat_ranges(keys, [0] * len(keys), [limit] * len(keys), on_error="return")
        for url, result in zip(group, results, strict=True):
            out[url] = result
    return out


def open_binary(url: str) -> BinaryIO:
    """A readable binary file object (for list files and Parquet)."""
    if not is_remote(url):
        return open(url, "rb")
    return filesystem(url).open(_key(url), "rb")


@dataclass(frozen=True, slots=True)
class Entry:
    url: str
    size: int
    # The object's version as the listing gives it (S3's ETag, GCS's generation): with
    # the size, what tells an object replaced at the same key.
    version: str | None = None

    @property
    def signature(self) -> str | None:
        return f"{self.size}:{self.version}" if self.version else None


def _version(info: dict[str, Any]) -> str | None:
    found = info.get("generation") or info.get("ETag") or info.get("etag")
    return str(found).strip('"') if found else None


def is_dir(url: str) -> bool:
    if not is_remote(url):
        return os.path.isdir(url)
    return filesystem(url).isdir(_key(url))


def exists(url: str) -> bool:
    if not is_remote(url):
        return os.path.exists(url)
    return filesystem(url).exists(_key(url))


def walk_prefix(url: str, keep: Callable[[str], bool]) -> Iterator[Entry]:
    """Every object under a bucket prefix whose key `keep` accepts, streamed page by page
    (S3 lists 1,000 keys a page): a million objects are never one list in memory."""
    fs = filesystem(url)
    scheme = scheme_of(url)
    prefix = _key(url).rstrip("/") + "/"
    bucket, _, key_prefix = prefix.partition("/")
    if hasattr(fs, "_iterdir"):  # s3fs: the paginated ListObjectsV2, without a delimiter
        from fsspec.asyn import sync

        listing = fs._iterdir(bucket, delimiter="", prefix=key_prefix)

        async def next_page() -> list[dict[str, Any]] | None:
            page = []
            async for info in listing:
                page.append(info)
                if len(page) >= 1000:
                    break
            return page or None

        # One page at a time, on fsspec's own loop: memory holds a page, not the listing.
        while (page := sync(fs.loop, next_page)) is not None:
            for info in page:
                if info.get("type") == "file" and keep(info["name"]):
                    yield Entry(
                        f"{scheme}://{info['name']}", int(info.get("size") or 0), _version(info)
                    )
        return
    for name, info in sorted(fs.find(prefix, detail=True).items()):
        if keep(name):
            yield Entry(f"{scheme}://{name}", int(info.get("size") or 0), _version(info))


def glob(url: str) -> Iterator[Entry]:
    fs = filesystem(url)
    scheme = scheme_of(url)
    for name, info in sorted(fs.glob(_key(url), detail=True).items()):
        if info.get("type") == "file":
            yield Entry(f"{scheme}://{name}", int(info.get("size") or 0), _version(info))


def list_names(url: str) -> dict[str, int]:
    """Name -> size of the objects directly under a bucket folder (not recursive)."""
    fs = filesystem(url)
    try:
        listing = fs.ls(_key(url), detail=True, refresh=True)
    except FileNotFoundError as exc:
        if _error_code(exc) == "NoSuchBucket":
            raise  # not an empty folder: the bucket itself is missing
        return {}
    return {
        name_of(info["name"]): int(info.get("size") or 0)
        for info in listing
        if info.get("type") == "file"
    }


# -- writing ------------------------------------------------------------------------------


def write_bytes(url: str, data: bytes) -> None:
    """Write an object whole: one PUT, visible only complete."""
    filesystem(url).pipe_file(_key(url), data)


def create_exclusive(url: str, data: bytes) -> bool:
    """Create the object only if no object has its name (`If-None-Match: *`); whether
    this call created it."""
    try:
        filesystem(url).pipe_file(_key(url), data, mode="create")
    except FileExistsError:
        return False
    return True


def delete(url: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        filesystem(url).rm_file(_key(url))


def download(url: str, local: str) -> None:
    filesystem(url).get_file(_key(url), local)


def upload(local: str, url: str) -> None:
    """Put a local file as one object (a single PUT up to 5 GB: visible only complete)."""
    with open(local, "rb") as f:
        write_bytes(url, f.read())


def bucket_error(url: str, exc: BaseException) -> StorageError:
    """A failed bucket call as the one-line StorageError every command ends with."""
    return StorageError(f"{url}: {bucket_problem(url, exc)}")


def deliver(local: Path, target: str) -> None:
    """Put a finished local file where the user asked: a bucket object (one PUT), or a
    local path (its folders made, then renamed into place: visible only complete)."""
    if is_remote(target):
        try:
            upload(str(local), target)
        except Exception as exc:
            raise bucket_error(target, exc) from None
        return
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, path)
    except OSError as exc:
        raise storage_error(path.parent, exc) from None


def cache_root() -> Path:
    """Where caption keeps local copies: bucket folders' mirrors, the token file."""
    if env := os.environ.get("CAPTION_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "caption"
