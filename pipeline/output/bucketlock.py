"""One run per bucket folder, without `flock`: a lock of numbered generations.

The lock is the newest object under `OUT/.lock/` (`g-000000000007`), each created with a
conditional PUT (`If-None-Match: *`), so exactly one writer can create a given
generation. Its body names the holder and when its lease ends.

- Taking a free folder creates generation 1; taking over an expired lock (or one whose
  holder process is gone from this very machine) creates the next generation. Runs that
  race for it all try to create the same name: one succeeds, the others then read a
  fresh lock and are refused. Nothing is deleted to make room, so a later deleter can
  never remove a winner's lock, and the newest generation is never deleted at all
  (releasing marks it released), so numbers only grow: a run that read an old
  generation can never create a name that a newer holder's successor will also take.
- Renewing is the same step: the holder creates the next generation and then removes
  its old one. If another run created that generation first, the holder has lost the
  folder and says so.
- The holder counts its lease from the moment it last renewed (a monotonic clock), and
  stops sending before that lease can end (`valid_for`), so a run cut off from the bucket
  never sends while another may have taken the folder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pipeline.errors import StorageError, UsageError
from pipeline.io.storage import (
    bucket_problem,
    create_exclusive,
    delete,
    join,
    list_names,
    read_bytes,
    write_bytes,
)
from pipeline.output.layout import LOCK_GENERATION_PREFIX, LOCK_NAME

log = logging.getLogger(__name__)


class LockLost(StorageError):
    """Another run holds the folder now: retrying cannot mend it."""


LEASE_S = 60.0  # CAPTION_LOCK_LEASE_S overrides it (the tests shorten it)
_PREFIX = LOCK_GENERATION_PREFIX


def lease_s() -> float:
    return float(os.environ.get("CAPTION_LOCK_LEASE_S") or LEASE_S)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _started(pid: int) -> str:
    """When a process started, in clock ticks since boot (Linux), or ''."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


# The holders (`BucketLock.holder`) whose lock this process holds now.
_HELD: set[str] = set()


def _gone(held: dict[str, Any]) -> bool:
    """Whether the holder was a process of this machine, since this boot, that is no
    longer running (a `kill -9` here), or a lock of this very process that it gave up
    (a run in a notebook that the bucket failed): then its lease need not be waited out."""
    if held.get("host") != socket.gethostname() or held.get("boot_id") != _boot_id():
        return False
    pid = held.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return held.get("holder") not in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return bool(held.get("started")) and _started(pid) != held.get("started")


@dataclass(slots=True)
class _Held:
    generation: int
    body: dict[str, Any]


class BucketLock:
    def __init__(self, folder_url: str) -> None:
        self.url = folder_url.rstrip("/")
        self.dir = join(self.url, LOCK_NAME)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.generation = 0
        self._renewed_at = 0.0  # monotonic: when the current lease was last taken

    def _name(self, generation: int) -> str:
        return join(self.dir, f"{_PREFIX}{generation:012d}")

    def _body(self) -> bytes:
        pid = os.getpid()
        return json.dumps(
            {
                "holder": self.holder,
                "host": socket.gethostname(),
                "pid": pid,
                "boot_id": _boot_id(),
                "started": _started(pid),
                "expires_at": time.time() + lease_s(),
                "lease_s": lease_s(),
            }
        ).encode()

    def _generations(self) -> list[int]:
        names = list_names(self.dir)
        return sorted(
            int(n[len(_PREFIX) :]) for n in names if n.startswith(_PREFIX) and n[2:].isdigit()
        )

    def _newest(self) -> _Held | None:
        """The newest generation and its body (None: no lock). A generation removed
        while it is read (renewed, released) is looked up again."""
        for _ in range(5):
            generations = self._generations()
            if not generations:
                return None
            try:
                body = json.loads(read_bytes(self._name(generations[-1])) or b"{}")
            except FileNotFoundError:
                continue
            except ValueError:
                body = {}  # unreadable: treated as expired
            return _Held(generations[-1], body if isinstance(body, dict) else {})
        return None

    def _fail(self, exc: BaseException) -> StorageError:
        return StorageError(
            f"{self.url}: cannot take or renew the folder's lock: {bucket_problem(self.url, exc)}"
        )

    # -- taking it ------------------------------------------------------------------

    def acquire(self, attempts: int = 8) -> None:
        """Take the lock, or raise UsageError naming the holder (StorageError when the
        bucket cannot be reached or written)."""
        try:
            for _ in range(attempts):
                held = self._newest()
                target = 1
                if held is not None:
                    expired = float(held.body.get("expires_at") or 0) < time.time()
                    if not expired and not _gone(held.body):
                        left = float(held.body["expires_at"]) - time.time()
                        raise UsageError(
                            f"{self.url} is in use by another caption run "
                            f"({held.body.get('holder')}); wait for it to finish, or, if it "
                            f"was killed on another machine, for its lease to run out (in "
                            f"{left:.0f} s), or use another output folder"
                        )
                    if not held.body.get("released"):
                        log.warning(
                            "%s: taking over a lock whose %s (%s)",
                            self.url,
                            "lease ran out" if expired else "holder process is gone",
                            held.body.get("holder"),
                        )
                    target = held.generation + 1
                started = time.monotonic()
                if create_exclusive(self._name(target), self._body()):
                    self.generation, self._renewed_at = target, started
                    _HELD.add(self.holder)
                    if held is not None:
                        self._remove(held.generation)
                    return
                # Another run created this generation first: look again (it holds it now).
        except (UsageError, StorageError):
            raise
        except Exception as exc:  # whatever the bucket library raises: one line
            raise self._fail(exc) from None
        raise UsageError(
            f"{self.url}: {attempts} tries to take the folder's lock lost the race to other runs; try again"
        )

    def renew(self) -> None:
        """Extend the lease: create the next generation, then drop ours. StorageError if
        another run holds the folder now (or the bucket cannot be reached)."""
        started = time.monotonic()
        target = self.generation + 1
        try:
            created = create_exclusive(self._name(target), self._body())
        except Exception as exc:
            raise self._fail(exc) from None
        if not created and not self._ours(target):
            raise LockLost(
                f"{self.url}: another run took this folder's lock; this run stopped sending"
            )
        previous, self.generation, self._renewed_at = self.generation, target, started
        self._remove(previous)

    def _ours(self, generation: int) -> bool:
        """Whether that generation is ours (a create whose answer was lost, retried)."""
        try:
            body = json.loads(read_bytes(self._name(generation)) or b"{}")
        except Exception:
            return False
        return isinstance(body, dict) and body.get("holder") == self.holder

    def valid_for(self) -> float:
        """Seconds left of the lease as this process counts it (never longer than the
        bucket's copy says)."""
        return self._renewed_at + lease_s() - time.monotonic()

    def _remove(self, generation: int) -> None:
        try:
            delete(self._name(generation))
        except Exception as exc:  # an old generation left behind does no harm
            log.info("%s: could not remove lock generation %d: %s", self.url, generation, exc)

    def release(self) -> None:
        """Give the folder up: our generation stays, marked released (its lease ended),
        so the next run takes the next number. A failure is one warning: the lease runs
        out by itself."""
        if not self.generation:
            return
        try:
            body = json.loads(self._body())
            body.update(expires_at=0, released=True)
            write_bytes(self._name(self.generation), json.dumps(body).encode())
        except Exception as exc:
            log.warning(
                "%s: could not release the lock (%s); its lease runs out by itself",
                self.url,
                bucket_problem(self.url, exc),
            )
        self.abandon()

    def abandon(self) -> None:
        """Stop holding the lock without a word to the bucket (which failed us): its
        lease runs out by itself, and a rerun on this machine takes it over at once."""
        _HELD.discard(self.holder)
        self.generation = 0
