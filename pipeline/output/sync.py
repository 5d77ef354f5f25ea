"""Keeping a bucket folder's mirror pushed while a run lasts, and its lock's lease alive.

A thread pushes (and renews the lease) every `sync_s` seconds; a failure is retried with
backoff while the lease lasts. A watchdog thread stops the run before its lease can end,
even while a call to the bucket hangs: a run must never send while another may have
taken the folder. Any failure, in either thread, reaches the run through `on_lost` and
ends the session with one StorageError; none is lost with a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import StorageError
from pipeline.io.storage import bucket_error
from pipeline.output.bucketlock import BucketLock, LockLost, lease_s

log = logging.getLogger(__name__)


class Sync:
    def __init__(
        self,
        url: str,
        local: Path,
        lock: BucketLock,
        push: Callable[[], object],
        sync_s: float,
        on_lost: list[Callable[[str], None]],
    ) -> None:
        self.url, self.local, self.lock, self.push = url, local, lock, push
        self.sync_s = sync_s
        self.on_lost = on_lost
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._losing = threading.Lock()
        self._last_problem = ""  # the latest failed call to the bucket, for the stop message

    @contextmanager
    def running(self, renew: bool) -> Iterator[None]:
        """Push every few seconds (renewing the lock's lease if `renew`) while the body
        runs, then push once more; a failure is raised here, after the body has ended
        (the run was told to stop sending through `on_lost`)."""
        syncer = threading.Thread(
            target=self._sync_loop, args=(renew,), name="caption-mirror", daemon=True
        )
        syncer.start()
        watchdog = threading.Thread(target=self._watch, name="caption-lease", daemon=True)
        if renew:
            watchdog.start()
        try:
            yield
        finally:
            self._stop.set()
            syncer.join()
            if renew:
                watchdog.join()
        if self.failure is not None:
            raise self.failure

        def last_push() -> None:
            if renew:
                self.lock.renew()
            self.push()

        self._retrying(last_push, deadline=None if renew else self._task_deadline())

    def _sync_loop(self, renew: bool) -> None:
        """Renew and push every `sync_s` seconds. A failure is retried with backoff while
        the lease lasts; when it would end before a renewal succeeds, or on an error that
        retrying cannot mend, the run is told to stop (`on_lost`). Nothing raised here is
        lost: it ends the session (`running`)."""
        deadline = None if renew else self._task_deadline()
        while not self._stop.wait(self.sync_s) and self.failure is None:
            try:
                if renew:
                    self._retrying(self.lock.renew, deadline, stoppable=True)
                else:
                    deadline = self._task_deadline()
                self._retrying(self.push, deadline, stoppable=True)
            except BaseException as exc:  # the thread must not die with the run unaware
                failure = exc if isinstance(exc, StorageError) else bucket_error(self.url, exc)
                self._lose(failure)
                return

    def _retrying(
        self, step: Callable[[], object], deadline: float | None, stoppable: bool = False
    ) -> None:
        """Run `step`, again after a failure (backoff 1, 2, 4... s, at most 8), until it
        succeeds, or the lock's lease (or `deadline`) would end first: then one
        StorageError saying the answers are safe in the mirror. With `stoppable`, the
        end of the run ends the retries too (the last push retries on its own)."""
        wait = 1.0
        while True:
            try:
                step()
                return
            except LockLost:
                raise
            except StorageError as exc:
                self._last_problem = str(exc)
                left = (deadline - time.monotonic()) if deadline else self._margin()
                if left <= wait:
                    raise StorageError(
                        f"{exc}; still failing after retries, with the folder's lease about "
                        f"to end, so this run stopped sending. Every answer so far is safe in "
                        f"the local mirror {self.local}: rerun the same command once the "
                        "bucket answers, and it pushes them and goes on"
                    ) from None
                log.warning("%s (retrying in %.0f s)", exc, wait)
                if not stoppable:
                    time.sleep(wait)
                elif self._stop.wait(wait):
                    return
                wait = min(wait * 2, 8.0)

    def _task_deadline(self) -> float:
        """A Ray task holds no lease of its own (its driver does, with a lease of three
        sync periods at least): it retries a push that long, then gives up and hands its
        shards to the driver."""
        return time.monotonic() + 3 * self.sync_s

    def _margin(self) -> float:
        """Seconds of lease left to act in: a sync period is kept in hand, for a call
        under way (the bucket's library retries for a while before it gives up)."""
        return self.lock.valid_for() - self.sync_s

    def _watch(self) -> None:
        """Stop the run before its lease can end, even while a call to the bucket hangs
        (a library's own retries can take half a minute): a run must never send while
        another may have taken the folder."""
        while not self._stop.wait(0.25):
            if self.failure is None and self.lock.valid_for() < self.sync_s:
                cause = (
                    self._last_problem
                    or "the storage service is unreachable: a call to it has not returned"
                )
                self._lose(
                    StorageError(
                        f"{self.url}: the folder's lock could not be renewed for "
                        f"{lease_s() - self.lock.valid_for():.0f} s ({cause}), so this run "
                        "stopped sending before its lease could end. "
                        f"Every answer so far is safe in the local mirror {self.local}: rerun "
                        "the same command once the bucket answers, and it pushes them and "
                        "goes on"
                    )
                )
                return

    def _lose(self, failure: BaseException) -> None:
        with self._losing:
            if self.failure is not None:
                return  # told once
            self.failure = failure
        log.info("%s", failure)  # the session raises it once the run has stopped
        for callback in self.on_lost:
            callback(str(failure))
