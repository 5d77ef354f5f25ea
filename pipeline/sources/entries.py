"""One source argument -> batches of entries, whatever it is: a folder (walked), a glob, an
http(s) URL, one image, a list file, or any of these in a bucket. Finding local files is
`sources/walk.py`'s job, reading lists `sources/lists.py`'s, buckets `io/storage.py`'s; ids and duplicates
are `sources/manifest.py`'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from pipeline.errors import UsageError
from pipeline.io.storage import check_scheme, glob, is_remote, walk_prefix
from pipeline.sources.ids import RowSpec
from pipeline.sources.images import is_url
from pipeline.sources.lists import BATCH_ROWS, LIST_EXTENSIONS, read_list
from pipeline.sources.walk import (
    IMAGE_EXTENSIONS,
    Links,
    glob_files,
    has_magic,
    is_image_name,
    walk,
)


def _batched(entries: Iterable[tuple[str, str, str | None]]) -> Iterator[list[dict[str, Any]]]:
    """(key, source, signature) entries in batches of entry dicts (the signature only when
    the finder knows it: a bucket listing's)."""
    batch: list[dict[str, Any]] = []
    for key, source, signature in entries:
        entry = {"key": key, "source": source}
        if signature is not None:
            entry["signature"] = signature
        batch.append(entry)
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _glob_images(pattern: str, links: Links) -> Iterator[tuple[str, str]]:
    others = 0
    found = False
    for key, source in glob_files(pattern, links):
        if is_image_name(key):
            found = True
            yield key, source
        else:
            others += 1
    if not found:
        raise UsageError(
            f"source {pattern!r}: the glob matched no image files "
            f"({others} file(s) of other types; images are "
            f"{' '.join(sorted(IMAGE_EXTENSIONS))})"
        )


def source_entries(source: str, spec: RowSpec, links: Links) -> Iterator[list[dict[str, Any]]]:
    """Batches of entries of one source argument: `source` (an absolute path or a URL),
    `key` when the finder knows the id's key (a walk's real path), `columns` (a list's)."""
    if is_url(source):
        yield [{"key": source, "source": source}]
        return
    if is_remote(source):
        yield from _bucket_batches(source, spec)
        return
    check_scheme(source)
    if os.path.isdir(source):
        yield from _batched((key, path, None) for key, path in walk(source, links))
        return
    if os.path.exists(source):
        ext = os.path.splitext(source)[1].lower()
        if ext in IMAGE_EXTENSIONS:
            yield [{"source": os.path.abspath(source)}]
            return
        if ext not in LIST_EXTENSIONS:
            raise UsageError(
                f"source {source!r}: unsupported file type {ext or '(none)'}; expected an "
                f"image or a list file ({' '.join(sorted(LIST_EXTENSIONS))})"
            )
        try:
            yield from read_list(source, spec.column, spec.id_column)
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        except PermissionError:
            raise UsageError(f"{source}: permission denied") from None
        return
    if has_magic(source):
        yield from _batched((key, path, None) for key, path in _glob_images(source, links))
        return
    raise UsageError(f"source {source!r}: no such file or folder")


def _bucket_batches(source: str, spec: RowSpec) -> Iterator[list[dict[str, Any]]]:
    """A bucket prefix walked like a folder (streamed), a glob, one object, or a list
    file in a bucket. An object's id is hashed from its URL."""
    ext = os.path.splitext(source)[1].lower()
    if ext in LIST_EXTENSIONS and not has_magic(source):
        try:
            yield from read_list(source, spec.column, spec.id_column)
        except FileNotFoundError:
            raise UsageError(f"source {source!r}: no such object") from None
        except PermissionError:
            raise UsageError(f"source {source!r}: access denied") from None
        return
    if ext in IMAGE_EXTENSIONS and not has_magic(source):
        yield [{"key": source, "source": source}]  # read (or found missing) by the run
        return
    entries = glob(source) if has_magic(source) else walk_prefix(source, is_image_name)
    yield from _batched((e.url, e.url, e.signature) for e in entries if is_image_name(e.url))
