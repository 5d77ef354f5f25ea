"""Row ids: what a manifest row's id is hashed from.

- `path` (the default): a local file's real path, absolute, links resolved. The same file
  gets the same id however it is named (relative, absolute, `./`, a trailing slash, a
  linked parent) and from any working folder, and two files never share one. A URL is
  hashed as written.
- `content`: the file's bytes. Identical images share an id, so the second is dropped as
  a duplicate (not paid for), and ids survive moving the files to another folder or
  machine.
- `--id-column`: the user's own ids, from a list file.

An id is 16 hex digits of SHA-256: stable across runs, machines and Python versions.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pipeline.io.storage import is_remote

ID_FROM = ("path", "content")
ID_VERSION = 2  # 1: the path as named (before ids survived path spelling)
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class RowSpec:
    """How sources become manifest rows: which list column names the image, and where
    the ids come from."""

    column: str | None = None  # list files: the column with the image path or URL
    id_column: str | None = None  # list files: the user's own ids
    id_from: str = "path"  # "path" or "content"; ignored with id_column

    def __post_init__(self) -> None:
        if self.id_from not in ID_FROM:
            raise ValueError(f"id_from must be one of {ID_FROM}, not {self.id_from!r}")

    @property
    def scheme(self) -> str:
        """What the ids are, for run.json: `path`, `content` or `column:<name>`."""
        return f"column:{self.id_column}" if self.id_column else self.id_from


PATH_IDS = RowSpec()


def stable_id(key: str) -> str:
    """16 hex digits of SHA-256 of `key`."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class RealPaths:
    """Real paths of many files, resolving each folder once: a file costs one `lstat`
    (to see whether it is a link itself) instead of one per path component."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        """The real path of `path`, which is absolute and normalised (`os.path.abspath`)."""
        if os.path.islink(path):
            return portable_real(path)
        folder, _, name = path.rpartition("/")
        real = self._folders.get(folder)
        if real is None:
            real = self._folders[folder] = portable_real(folder or "/")
        return real.rstrip("/") + "/" + name


def portable_real(path: str) -> str:
    real = os.path.realpath(path)
    return real if os.sep == "/" else real.replace(os.sep, "/")


def content_id(path: str) -> str | None:
    """The id of a file's bytes, or None if it cannot be read (it keeps its path id and
    the run makes it an error row)."""
    digest = hashlib.sha256()
    try:
        # Non-blocking, then checked: a FIFO named like an image must not hang the ingest.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return digest.hexdigest()[:16]


def content_ids(
    paths: list[str],
    pool: ThreadPoolExecutor,
    read_objects: Callable[[list[str]], dict[str, bytes | BaseException]],
) -> list[str | None]:
    """Content ids of many files, read in parallel (hashing releases the GIL); bucket
    objects (`s3://`) are fetched by `read_objects`, concurrently."""
    remote = [p for p in paths if is_remote(p)]
    fetched = read_objects(remote) if remote else {}
    local = iter(pool.map(content_id, [p for p in paths if not is_remote(p)]))
    out: list[str | None] = []
    for path in paths:
        if not is_remote(path):
            out.append(next(local))
            continue
        data = fetched.get(path)
        out.append(hashlib.sha256(data).hexdigest()[:16] if isinstance(data, bytes) else None)
    return out


def spelling_of(source: str, row_id: str, hint: tuple[int, int] | None) -> tuple[int, int] | None:
    """The spelling (components kept from the end, `../` prefixes) of `source` whose
    version-1 id is `row_id`, trying `hint` (the last one that matched) first."""
    parts = source.replace(os.sep, "/").strip("/").split("/")
    tries: list[tuple[int, int]] = [hint] if hint else []
    tries += [(n, up) for n in range(len(parts), 0, -1) for up in range(4)]
    for n, up in tries:
        if n > len(parts):
            continue
        tail = "/".join(parts[len(parts) - n :])
        spelled = ("../" * up) + tail
        if stable_id(spelled) == row_id or (
            n == len(parts) and up == 0 and stable_id("/" + tail) == row_id
        ):
            return n, up
    return None
