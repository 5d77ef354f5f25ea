"""Finding images on the local file system: folders and globs, each file once.

A folder is walked recursively, in name order. Links to folders are followed, each real
folder once (by device and inode), so a link loop ends and a folder reached twice is not
ingested twice; a link to a file is kept only if the file it names is not ingested anyway.
Links that lead nowhere new (loops, duplicates, broken) are counted in `Links`.

Globs are matched against the same walk, so `**` cannot loop either; a glob without `**`
descends no deeper than it has segments.

Each image is yielded as `(key, source)`: `key` is its real path (absolute, links
resolved: it is hashed into the id, see `sources/ids.py`), `source` the absolute path as reached
from the argument given, which is opened. Real paths cost one `realpath` per walk and
per linked folder, not one per file.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipeline.sources.ids import portable_real

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})


@dataclass(slots=True)
class Links:
    """Symbolic links met while walking that led nowhere new."""

    skipped: int = 0  # loops, second ways to a folder or file already walked, broken


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def portable(path: str) -> str:
    """The path normalised, with forward slashes on every OS (it is hashed into the id)."""
    normal = os.path.normpath(path)
    return normal if os.sep == "/" else normal.replace(os.sep, "/")


def has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _join(key_dir: str, name: str) -> str:
    return posixpath.join(key_dir, name)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


# Decides, from a folder's path relative to the walk's root (segments), whether to go in.
DirFilter = Callable[[tuple[str, ...]], bool]
# Decides, from a file's path relative to the walk's root ("a/b.png"), whether to keep it.
FileFilter = Callable[[str], bool]


def walk(
    root: str,
    links: Links,
    *,
    enter: DirFilter | None = None,
    keep: FileFilter | None = None,
) -> Iterator[tuple[str, str]]:
    """`(key, source)` of every file under `root` that `keep` accepts (default: image
    names), folders first-come in name order. Not-regular files (a FIFO named `x.png`)
    are yielded too, so that they become error rows rather than vanish."""
    keep = keep or is_image_name
    key_root = portable_real(root)
    # Every real folder the walk enters, by identity -> its path relative to the root.
    seen: dict[tuple[int, int], str] = {_identity(os.stat(root)): ""}
    file_links: list[tuple[str, str]] = []  # (key, source) of links to files
    stack: list[tuple[str, str, str]] = [(key_root, os.path.abspath(root), "")]
    while stack:
        key_dir, abs_dir, rel_dir = stack.pop()
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable folder: skipped, as os.walk does
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            is_link = entry.is_symlink()
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if enter is not None and not enter(tuple(rel.split("/"))):
                    continue
                try:
                    ident = _identity(entry.stat())
                except OSError:
                    links.skipped += is_link
                    continue
                if ident in seen:
                    links.skipped += 1  # a loop, or a second way into a folder
                    continue
                seen[ident] = rel
                key = portable_real(entry.path) if is_link else _join(key_dir, entry.name)
                subdirs.append((key, entry.path, rel))
            elif keep(rel):
                if not is_link:
                    yield _join(key_dir, entry.name), entry.path
                elif os.path.exists(entry.path):
                    file_links.append((_join(key_dir, entry.name), entry.path))
                else:
                    links.skipped += 1  # broken
        stack.extend(reversed(subdirs))
    yield from _linked_files(file_links, seen, links, keep)


def _linked_files(
    file_links: list[tuple[str, str]],
    seen: dict[tuple[int, int], str],
    links: Links,
    keep: FileFilter,
) -> Iterator[tuple[str, str]]:
    """Links to files, once the walk knows every folder it went through: a link whose
    target the walk ingested directly, or that names a file another link named, is
    skipped. The real path decides."""
    taken: set[str] = set()
    for _, source in file_links:
        real = os.path.realpath(source)
        folder, name = os.path.split(real)
        try:
            where = seen.get(_identity(os.stat(folder)))
            regular = stat.S_ISREG(os.stat(real).st_mode)
        except OSError:
            where, regular = None, False
        walked_directly = (
            where is not None and regular and keep(f"{where}/{name}" if where else name)
        )
        if walked_directly or real in taken:
            links.skipped += 1
            continue
        taken.add(real)
        yield portable(real), source


# ---------------------------------------------------------------------------------------
# Globs


def _segment(seg: str) -> str:
    """One path segment of a glob as a regex: `*`, `?` and `[...]` never match `/`, and
    a name starting with a dot only by a pattern starting with one (like `glob`)."""
    out = [] if seg.startswith(".") else [r"(?!\.)"]
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := seg.find("]", i + 2)) != -1:
            body = seg[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


_ANY_DIRS = r"(?:(?!\.)[^/]+/)*"


def _glob_regex(segments: list[str]) -> re.Pattern[str]:
    parts = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            parts.append(_ANY_DIRS + (r"(?!\.)[^/]+" if last else ""))
        else:
            parts.append(_segment(seg) + ("" if last else "/"))
    return re.compile("".join(parts))


def split_glob(pattern: str) -> tuple[str, list[str]]:
    """(the folder before the first segment with a wildcard, the segments from there)."""
    segments = pattern.split("/")
    first = next(i for i, seg in enumerate(segments) if has_magic(seg))
    root = "/".join(segments[:first])
    if pattern.startswith("/") and not root:
        root = "/"
    return root or ".", [s for s in segments[first:] if s]


def glob_files(pattern: str, links: Links) -> Iterator[tuple[str, str]]:
    """`(key, source)` of every file the glob matches (any type: the caller picks images)."""
    root, segments = split_glob(pattern)
    if not os.path.isdir(root):
        return
    full = _glob_regex(segments)
    recursive = "**" in segments
    dir_patterns = [re.compile(_segment(s)) for s in segments[:-1]]

    def enter(rel: tuple[str, ...]) -> bool:
        if recursive:
            return True  # the pattern decides which files count
        depth = len(rel)
        return depth <= len(dir_patterns) and bool(dir_patterns[depth - 1].fullmatch(rel[-1]))

    def keep(rel: str) -> bool:
        return bool(full.fullmatch(rel))

    yield from walk(root, links, enter=enter, keep=keep)
