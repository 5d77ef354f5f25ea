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

One run per folder, without `flock`: the lock is an object created with a conditional
PUT (`If-None-Match: *`) that holds a lease, renewed at every push. A killed run's lease
runs out after `LEASE_S` seconds, and the next run may then take the lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import StorageError, UsageError
from pipeline.storage import (
    create_exclusive,
    delete,
    download,
    is_remote,
    join,
    list_names,
    read_bytes,
    upload,
    write_bytes,
)

log = logging.getLogger(__name__)

SYNC_EVERY_S = 5.0
LEASE_S = 60.0  # CAPTION_LOCK_LEASE_S overrides it (the tests shorten it)


def lease_s() -> float:
    return float(os.environ.get("CAPTION_LOCK_LEASE_S") or LEASE_S)


def sync_every_s() -> float:
    """Pushes come at least three times per lease, so a live run never loses its lock."""
    return min(SYNC_EVERY_S, lease_s() / 3)


STATE = ".caption"
LOCK = ".lock"
_SHARD = re.compile(r"part-.*\.parquet$")
_STATE_FILES = re.compile(r"(run\.json|manifest\.parquet|part-.*\.journal\.jsonl)$")


# The bucket folder each local mirror of this process stands for, while its run lasts.
ACTIVE: dict[Path, BucketFolder] = {}


def cache_root() -> Path:
    if env := os.environ.get("CAPTION_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "caption"


def cache_folder(url: str) -> Path:
    """The local mirror of a bucket folder: one per output URI."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1].strip("/"))[-60:]
    return cache_root() / f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def _storage_error(url: str, exc: BaseException) -> StorageError:
    return StorageError(
        f"{url}: the bucket refused a write or a read ({type(exc).__name__}: {exc})"
    )


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
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # What the bucket holds, as far as this mirror knows: relative name -> (size, mtime
        # of the local file when it was last pushed or pulled).
        self._pushed: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._failure: BaseException | None = None

    # -- names ----------------------------------------------------------------------

    def _remote(self, rel: str) -> str:
        return join(self.url, *rel.split("/"))

    def _mine(self, name: str) -> bool:
        return self.only is None or name.startswith(self.only)

    def _local_files(self) -> dict[str, Path]:
        """Relative name -> path of what the mirror pushes: shards, then state files."""
        files = {p.name: p for p in self.local.glob("part-*.parquet") if self._mine(p.name)}
        state = self.local / STATE
        if state.is_dir():
            files |= {
                f"{STATE}/{p.name}": p
                for p in state.iterdir()
                if _STATE_FILES.match(p.name) and self._mine(p.name)
            }
        return files

    def _remote_files(self) -> dict[str, int]:
        shards = {n: s for n, s in list_names(self.url).items() if _SHARD.match(n)}
        state = {
            f"{STATE}/{n}": s
            for n, s in list_names(self._remote(STATE)).items()
            if _STATE_FILES.match(n)
        }
        return {k: v for k, v in (shards | state).items() if self._mine(k.rsplit("/", 1)[-1])}

    # -- pull -------------------------------------------------------------------------

    def pull(self, only: str | None = None) -> None:
        """Bring the local mirror up to what the bucket holds (or its files whose names
        start with `only`: what a Ray run's tasks wrote there). A local journal longer
        than the bucket's copy is kept (this machine's run was killed after its last
        push); a bucket without run.json is a new folder, and the mirror starts empty."""
        try:
            remote = self._remote_files()
        except OSError as exc:
            raise _storage_error(self.url, exc) from None
        if only is not None:
            remote = {k: v for k, v in remote.items() if k.rsplit("/", 1)[-1].startswith(only)}
        elif self.only is None and f"{STATE}/run.json" not in remote:
            unpushed = list((self.local / STATE).glob("*.journal.jsonl"))
            if unpushed:
                # A run here was killed before its first push: its answers are paid for.
                log.warning(
                    "%s: keeping %d journal(s) of a run killed before it reached the bucket",
                    self.url,
                    len(unpushed),
                )
            else:
                shutil.rmtree(self.local, ignore_errors=True)  # a new folder, or one removed
        self.local.mkdir(parents=True, exist_ok=True)
        (self.local / STATE).mkdir(exist_ok=True)
        local = self._local_files()
        for rel, size in sorted(remote.items()):
            path = self.local / rel
            have = path.stat().st_size if rel in local else -1
            if have == size or (rel.endswith(".journal.jsonl") and have > size):
                self._pushed[rel] = self._stamp(path) if have == size else (-1, -1)
                continue
            try:
                download(self._remote(rel), str(path) + ".part")
                os.replace(str(path) + ".part", path)
            except OSError as exc:
                raise _storage_error(self._remote(rel), exc) from None
            self._pushed[rel] = self._stamp(path)
        log.info("pulled %s into %s", self.url, self.local)

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    # -- push -------------------------------------------------------------------------

    def push(self) -> int:
        """Make the bucket hold what the local folder holds; the number of objects
        written. Journals are listed before shards, so a journal folded meanwhile has
        its shard in this push; a journal's copy is deleted only once its shard is up."""
        journals = {r: p for r, p in self._local_files().items() if r.startswith(STATE)}
        shards = {r: p for r, p in self._local_files().items() if not r.startswith(STATE)}
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
                continue
            except OSError as exc:
                raise _storage_error(self._remote(rel), exc) from None
            self._pushed[rel] = stamp
            written += 1
        mine = {r for r in self._pushed if self._mine(r.rsplit("/", 1)[-1])}
        for rel in sorted(mine - set(journals) - set(shards)):
            if rel.endswith(".journal.jsonl"):
                shard = rel.removeprefix(f"{STATE}/").removesuffix(".journal.jsonl") + ".parquet"
                if shard not in self._pushed and (self.local / shard).exists():
                    continue  # folded, but its shard is not up yet: keep the copy
            try:
                delete(self._remote(rel))
            except OSError as exc:
                raise _storage_error(self._remote(rel), exc) from None
            del self._pushed[rel]
        return written

    # -- the lock ---------------------------------------------------------------------

    def _lock_body(self) -> bytes:
        return json.dumps(
            {"holder": self.holder, "expires_at": time.time() + lease_s(), "lease_s": lease_s()}
        ).encode()

    def acquire(self) -> None:
        lock = self._remote(LOCK)
        for _ in range(2):
            try:
                if create_exclusive(lock, self._lock_body()):
                    return
                held = json.loads(read_bytes(lock) or b"{}")
            except FileNotFoundError:
                continue  # released between the two calls: try again
            except (OSError, ValueError) as exc:
                raise _storage_error(lock, exc) from None
            if held.get("expires_at", 0) < time.time():
                log.warning(
                    "%s: taking over a lock whose lease ran out (%s)", self.url, held.get("holder")
                )
                delete(lock)
                continue
            left = held["expires_at"] - time.time()
            raise UsageError(
                f"{self.url} is in use by another caption run ({held.get('holder')}); wait "
                f"for it to finish, or, if it was killed, for its lease to run out (in "
                f"{left:.0f} s), or use another output folder"
            )
        raise UsageError(f"{self.url}: could not take the folder's lock; try again")

    def renew(self) -> None:
        lock = self._remote(LOCK)
        held = json.loads(read_bytes(lock) or b"{}")
        if held.get("holder") != self.holder:
            raise StorageError(
                f"{self.url}: another run took this folder's lock ({held.get('holder')})"
            )
        write_bytes(lock, self._lock_body())

    def release(self) -> None:
        try:
            held = json.loads(read_bytes(self._remote(LOCK)) or b"{}")
            if held.get("holder") == self.holder:
                delete(self._remote(LOCK))
        except (OSError, ValueError) as exc:
            log.warning(
                "%s: could not release the lock (%s); its lease runs out by itself", self.url, exc
            )

    # -- a run's session --------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Path]:
        """Lock, pull, push every few seconds while the body runs, push at the end,
        unlock. Yields the local folder to run on."""
        self.acquire()
        ACTIVE[self.local] = self
        try:
            with self._synced(renew=True) as local:
                yield local
        finally:
            ACTIVE.pop(self.local, None)
            self.release()

    @contextmanager
    def task_session(self) -> Iterator[Path]:
        """A Ray task's share of a bucket folder: its block's files only, pulled, then
        pushed every few seconds and at the end, under the driver's lock (no lock of its
        own). Yields the local folder to write the block in."""
        with self._synced(renew=False) as local:
            yield local

    @contextmanager
    def _synced(self, renew: bool) -> Iterator[Path]:
        """Pull, push every few seconds (renewing the lock's lease if `renew`) while the
        body runs, then push once more; a failed push in between is raised here."""
        self.pull()
        syncer = threading.Thread(
            target=self._sync_loop, args=(renew,), name="caption-mirror", daemon=True
        )
        syncer.start()
        try:
            yield self.local
        finally:
            self._stop.set()
            syncer.join()
        if self._failure is not None:
            raise self._failure
        self.push()

    def _sync_loop(self, renew: bool) -> None:
        while not self._stop.wait(self.sync_s):
            try:
                if renew:
                    self.renew()
                self.push()
            except (OSError, StorageError, ValueError) as exc:
                log.error("%s: could not update the bucket: %s", self.url, exc)
                self._failure = (
                    exc if isinstance(exc, StorageError) else _storage_error(self.url, exc)
                )
                return


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
        if not (folder.local / STATE / "run.json").exists():
            if must_exist:
                raise UsageError(f"{target}: not a caption output folder (no .caption/run.json)")
            shutil.rmtree(folder.local)  # a new folder: as if it did not exist
        yield folder.local
