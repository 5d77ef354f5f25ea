"""An output folder in a bucket (`s3://…`, `gs://…`), worked on through a local mirror.

A bucket has no append and no rename, and the run's crash safety rests on both (journals
appended a line per answer; shards renamed into place). So the run works on a local copy,
a cache folder keyed by the output URI (`$CAPTION_CACHE_DIR`, else `~/.cache/caption`),
with exactly the code and guarantees of a local folder, and the mirror keeps the bucket
up to date:

- on start it takes the bucket's lock, then pulls what the bucket holds (the state files,
  the shards, and the journal copies a run elsewhere left);
- every `SYNC_EVERY_S` seconds, and at the end, it pushes: new or rewritten shards (one
  PUT each: visible only complete), copies of the journals being written, the manifest
  and run.json; then it deletes what the local folder no longer has (folded journals,
  shards that compaction merged).

So a `kill -9` on the same machine re-sends at most what was in flight (the local journal
is whole), and a rerun on another machine, with the local disk gone, re-sends at most the
answers of the last `SYNC_EVERY_S` seconds.

One run per folder, without `flock`: `bucketlock.BucketLock`, generations created with
a conditional PUT, holding a lease renewed at every push.

The local mirror is the source of truth until its rows are in the bucket: it is never
emptied while it holds a file that was not pushed (`.caption/mirror.json` records what
was), whatever the bucket says. Keeping it pushed while a run lasts, and the lease
alive, is `sync.py`'s: when the lease cannot be renewed before it would end, the run is
told to stop sending (`on_lost`), its answers safe in the mirror, and the session ends
with one StorageError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UsageError
from pipeline.io.storage import (
    bucket_error,
    cache_root,
    delete,
    download,
    is_remote,
    join,
    list_names,
    upload,
)
from pipeline.output.bucketlock import BucketLock, lease_s
from pipeline.output.layout import (
    IS_SHARD,
    IS_STATE_FILE,
    JOURNAL_SUFFIX,
    LEGACY_MANIFEST_NAME,
    MANIFEST_NAME,
    PUSHED,
    RUN_JSON,
    SHARD_GLOB,
    SHARD_SUFFIX,
    STATE_DIR,
    UNPUSHED_PREFIX,
    shard_of_journal,
)
from pipeline.output.sync import Sync

log = logging.getLogger(__name__)

SYNC_EVERY_S = 5.0


def sync_every_s() -> float:
    """Pushes come at least three times per lease, so a live run never loses its lock."""
    return min(SYNC_EVERY_S, lease_s() / 3)


# The bucket folder each local mirror of this process stands for, while its run lasts.
ACTIVE: dict[Path, BucketFolder] = {}


def cache_folder(url: str) -> Path:
    """The local mirror of a bucket folder: one per output URI."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1].strip("/"))[-60:]
    return cache_root() / f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


class BucketFolder:
    def __init__(
        self,
        url: str,
        local: Path | None = None,
        only: str | None = None,
        sync_s: float | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.local = local or cache_folder(self.url)
        # A Ray task's mirror keeps only its own block's shards and journals
        # (`part-r<run>-<block>`), and run.json to read the job from.
        self.only = only
        self.sync_s = sync_s or sync_every_s()  # a Ray task gets its driver's
        self.lock = BucketLock(self.url)
        # What the bucket holds, as far as this mirror knows: relative name -> (size, mtime
        # of the local file when it was last pushed or pulled). Kept in `.caption/mirror.json`
        # too, so that a later run knows which local files never reached the bucket.
        self._pushed: dict[str, tuple[int, int]] = {}
        # Called (from the mirror's thread) with one line when the run must stop sending.
        self.on_lost: list[Callable[[str], None]] = []

    # -- names ----------------------------------------------------------------------

    def _remote(self, rel: str) -> str:
        return join(self.url, *rel.split("/"))

    def _mine(self, name: str) -> bool:
        return self.only is None or name.startswith(self.only)

    def _local_files(self) -> dict[str, Path]:
        """Relative name -> path of what the mirror pushes: shards, then state files."""
        files = {p.name: p for p in self.local.glob(SHARD_GLOB) if self._mine(p.name)}
        state = self.local / STATE_DIR
        if state.is_dir():
            files |= {
                f"{STATE_DIR}/{p.name}": p
                for p in state.iterdir()
                if IS_STATE_FILE.match(p.name) and self._mine(p.name)
            }
        return files

    def _remote_files(self) -> dict[str, int]:
        shards = {n: s for n, s in list_names(self.url).items() if IS_SHARD.match(n)}
        state = {
            f"{STATE_DIR}/{n}": s
            for n, s in list_names(self._remote(STATE_DIR)).items()
            if IS_STATE_FILE.match(n)
        }
        return {k: v for k, v in (shards | state).items() if self._mine(k.rsplit("/", 1)[-1])}

    # -- pull -------------------------------------------------------------------------

    def pull(self, only: str | None = None) -> None:
        """Bring the local mirror up to what the bucket holds (or its files whose names
        start with `only`: what a Ray run's tasks wrote there). Local files holding rows
        that never reached the bucket are kept whatever the bucket says: a local journal
        longer than the bucket's copy, a shard that differs from the bucket's (moved
        aside under a new name), and everything when the bucket has no run.json yet."""
        try:
            remote = self._remote_files()
        except Exception as exc:
            raise bucket_error(self.url, exc) from None
        self._pushed = self._load_pushed()
        if only is not None:
            remote = {k: v for k, v in remote.items() if k.rsplit("/", 1)[-1].startswith(only)}
        elif self.only is None and f"{STATE_DIR}/run.json" not in remote:
            unpushed = self._unpushed()
            if unpushed:
                # A run here ended before its rows reached the bucket: they are paid for.
                log.warning(
                    "%s: keeping %d file(s) of answers in %s that the bucket does not have "
                    "yet; they are pushed now",
                    self.url,
                    len(unpushed),
                    self.local,
                )
            else:
                shutil.rmtree(self.local, ignore_errors=True)  # a new folder, or one removed
                self._pushed = {}
        self.local.mkdir(parents=True, exist_ok=True)
        (self.local / STATE_DIR).mkdir(exist_ok=True)
        local = self._local_files()
        unpushed_names = set(self._unpushed())
        for rel, size in sorted(remote.items()):
            path = self.local / rel
            have = path.stat().st_size if rel in local else -1
            if have == size or (rel.endswith(JOURNAL_SUFFIX) and have > size):
                self._pushed[rel] = self._stamp(path) if have == size else (-1, -1)
                continue
            if have >= 0 and rel in unpushed_names and not rel.startswith(STATE_DIR):
                # Our shard, never pushed, and the bucket has another of that name.
                aside = self.local / f"{UNPUSHED_PREFIX}{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
                log.warning(
                    "%s: keeping %s, which the bucket lacks, as %s", self.url, rel, aside.name
                )
                os.replace(path, aside)
            try:
                download(self._remote(rel), str(path) + ".part")
                os.replace(str(path) + ".part", path)
            except Exception as exc:
                raise bucket_error(self._remote(rel), exc) from None
            self._pushed[rel] = self._stamp(path)
        self._save_pushed()
        log.info("pulled %s into %s", self.url, self.local)

    def _unpushed(self) -> list[str]:
        """Local files holding rows (shards, journals, the ledger) that the bucket is not
        known to hold as they are now."""
        not_rows = (RUN_JSON, MANIFEST_NAME, LEGACY_MANIFEST_NAME)
        rows = [r for r in self._local_files() if not r.endswith(not_rows)]
        return [r for r in rows if self._pushed.get(r) != self._stamp(self.local / r)]

    def _load_pushed(self) -> dict[str, tuple[int, int]]:
        try:
            data = json.loads((self.local / STATE_DIR / PUSHED).read_text())
            return {k: (int(v[0]), int(v[1])) for k, v in data.items()}
        except (OSError, ValueError, TypeError, IndexError, AttributeError):
            return {}

    def _save_pushed(self) -> None:
        path = self.local / STATE_DIR / PUSHED
        tmp = path.with_name(PUSHED + f".{uuid.uuid4().hex[:6]}.tmp")
        try:
            tmp.write_text(json.dumps(self._pushed))
            os.replace(tmp, path)
        except OSError as exc:  # only costs a re-push next time
            log.info("%s: could not record what was pushed: %s", self.url, exc)
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    # -- push -------------------------------------------------------------------------

    def push(self) -> int:
        """Make the bucket hold what the local folder holds; the number of objects
        written. Journals are listed before shards, so a journal folded meanwhile has
        its shard in this push; a journal's copy is deleted only once its shard is up."""
        journals = {r: p for r, p in self._local_files().items() if r.startswith(STATE_DIR)}
        shards = {r: p for r, p in self._local_files().items() if not r.startswith(STATE_DIR)}
        written = 0
        for rel, path in [*sorted(shards.items()), *sorted(journals.items())]:
            try:
                stamp = self._stamp(path)
            except FileNotFoundError:
                continue  # folded or compacted away since it was listed
            if self._pushed.get(rel) == stamp:
                continue
            try:
                upload(str(path), self._remote(rel))
            except FileNotFoundError:
                if path.exists():  # the bucket's answer, not our file: it is missing
                    raise bucket_error(self._remote(rel), FileNotFoundError()) from None
                continue
            except Exception as exc:
                raise bucket_error(self._remote(rel), exc) from None
            self._pushed[rel] = stamp
            written += 1
        mine = {r for r in self._pushed if self._mine(r.rsplit("/", 1)[-1])}
        for rel in sorted(mine - set(journals) - set(shards)):
            if rel.endswith(JOURNAL_SUFFIX):
                shard = shard_of_journal(rel.removeprefix(f"{STATE_DIR}/"))
                if shard not in self._pushed and (self.local / shard).exists():
                    continue  # folded, but its shard is not up yet: keep the copy
            try:
                delete(self._remote(rel))
            except Exception as exc:
                raise bucket_error(self._remote(rel), exc) from None
            del self._pushed[rel]
        self._save_pushed()
        return written

    # -- the lock ---------------------------------------------------------------------

    def acquire(self) -> None:
        self.lock.acquire()

    def release(self) -> None:
        self.lock.release()

    # -- a run's session --------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Path]:
        """Lock, pull, push every few seconds while the body runs, push at the end,
        unlock. Yields the local folder to run on."""
        self.acquire()
        ACTIVE[self.local] = self
        sync = Sync(self.url, self.local, self.lock, self.push, self.sync_s, self.on_lost)
        try:
            self.pull()
            with sync.running(renew=True):
                yield self.local
        finally:
            ACTIVE.pop(self.local, None)
            if sync.failure is None:
                self.release()
            else:  # the bucket failed us: a release would wait on it too
                self.lock.abandon()

    @contextmanager
    def task_session(self) -> Iterator[Path]:
        """A Ray task's share of a bucket folder: its block's files only, pulled, then
        pushed every few seconds and at the end, under the driver's lock (no lock of its
        own). Yields the local folder to write the block in."""
        self.pull()
        sync = Sync(self.url, self.local, self.lock, self.push, self.sync_s, self.on_lost)
        with sync.running(renew=False):
            yield self.local


@contextmanager
def readable(target: str, must_exist: bool = True) -> Iterator[Path]:
    """An output folder to read: a local one as it is; a bucket folder as a read-only
    copy (no lock taken, nothing written to the bucket, the copy removed afterwards),
    for `status`, `export` and `report`."""
    if not is_remote(target):
        yield Path(target)
        return
    with tempfile.TemporaryDirectory(prefix="caption-") as tmp:
        folder = BucketFolder(target, Path(tmp) / "out")
        folder.pull()
        if not (folder.local / STATE_DIR / RUN_JSON).exists():
            if must_exist:
                raise UsageError(f"{target}: not a caption output folder (no .caption/run.json)")
            shutil.rmtree(folder.local)  # a new folder: as if it did not exist
        yield folder.local
