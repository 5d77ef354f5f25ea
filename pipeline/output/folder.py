"""The output folder (its files are named in `layout.py`): run.json, the lock, the
folder's identity checks against a job, and crash recovery (`recover` folds journals
and removes temporaries). What it holds and paid (`books.scan`), and one row per id
(`books.compact`), are `books.py`'s."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config.identity import refuse_another_job, refuse_other_ids
from pipeline.config.labels import result_schema
from pipeline.config.settings import JobConfig
from pipeline.errors import UsageError, storage_error
from pipeline.io.storage import download, is_remote
from pipeline.output.layout import (
    JOURNAL_GLOB,
    LEGACY_MANIFEST_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    RUN_JSON,
    SHARD_GLOB,
    STATE_DIR,
    TMP_SUFFIX,
    WORKERS_LOCK,
)
from pipeline.output.writer import fold_journal, state_dir
from pipeline.sources.manifest import remove_stale_workdirs

log = logging.getLogger(__name__)

WAIT_FOR_WORKERS_S = 120.0
RUN_JSON_VERSION = 1


class OutputDir:
    def __init__(self, path: Path, label: str | None = None) -> None:
        # Absolute: pyarrow takes a relative path with a colon (`run-T11:48`) for a URI.
        self.path = Path(os.path.abspath(path))
        # How messages name the folder: its path, or the bucket URL it mirrors.
        self.label = label or str(self.path)
        self.state = state_dir(self.path)
        self.manifest = self._placed(MANIFEST_NAME)
        self.run_json = self._placed(RUN_JSON)

    def _legacy(self, name: str) -> list[Path]:
        """Where older versions kept a state file: beside the shards; the manifest also
        as `.caption/manifest.parquet`, which `**/*.parquet` globs read as results."""
        if name == MANIFEST_NAME:
            return [self.state / LEGACY_MANIFEST_NAME, self.path / LEGACY_MANIFEST_NAME]
        return [self.path / name]

    def _placed(self, name: str) -> Path:
        """A state file where it is: today's place, or an older version's (until
        `migrate`), read-only commands included."""
        current = self.state / name
        if current.exists():
            return current
        return next((p for p in self._legacy(name) if p.exists()), current)

    def migrate(self) -> None:
        """Under the lock: the state files of an older version move to today's places.
        The rest of an upgrade (schema, ids) is `output/upgrade.py`'s."""
        for name in (MANIFEST_NAME, RUN_JSON):
            current = self.state / name
            for legacy in self._legacy(name):
                if legacy.exists() and not current.exists():
                    try:
                        self.state.mkdir(exist_ok=True)
                        os.replace(legacy, current)
                    except OSError as exc:
                        raise storage_error(self.path, exc) from None
                    log.info("moved %s to %s", legacy, current)
        self.manifest = self.state / MANIFEST_NAME
        self.run_json = self.state / RUN_JSON

    def exists(self) -> bool:
        return self.path.is_dir()

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.state.mkdir(exist_ok=True)
        except FileExistsError:
            raise UsageError(f"{self.path}: exists and is not a folder") from None
        except OSError as exc:
            raise storage_error(self.path, exc) from None

    def remove_if_unused(self) -> None:
        """Remove the folder if nothing but the lock was ever written to it."""
        state_empty = not self.state.exists() or not any(self.state.iterdir())
        if state_empty and {p.name for p in self.path.iterdir()} <= {LOCK_NAME, STATE_DIR}:
            shutil.rmtree(self.path, ignore_errors=True)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one run. Two runs writing one folder would number their
        shards alike; the lock is the kernel's (flock), so a killed run releases it."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error(self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(
                f"{self.label} is in use by another caption run; wait for it to finish, "
                "or use another output folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextmanager
    def workers_lock(self) -> Iterator[None]:
        """Held shared by every Ray task while it writes the folder, so that a later run
        can wait for the tasks of a killed driver (`wait_for_workers`)."""
        fd = os.open(self.state / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def wait_for_workers(self) -> None:
        """Before a run touches the folder: the tasks of an earlier Ray run whose driver
        was killed may still be writing it for a few seconds (Ray stops them once it
        notices). Wait until none holds the workers' lock."""
        path = self.state / WORKERS_LOCK
        if not path.exists():
            return
        fd = os.open(path, os.O_RDWR)
        try:
            deadline = time.monotonic() + WAIT_FOR_WORKERS_S
            said = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise UsageError(
                            f"{self.label}: Ray workers of an earlier run still write to it "
                            f"after {WAIT_FOR_WORKERS_S:.0f} s; stop them (ray stop) and run "
                            "again"
                        ) from None
                    if not said:
                        log.warning("waiting for the Ray workers of an earlier run to stop")
                        said = True
                    time.sleep(0.2)
        finally:
            os.close(fd)  # releases the lock: this run's tasks take it shared

    def is_running(self) -> bool:
        """Whether a run holds the folder now (read-only: takes the lock only to test it)."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def journals(self) -> list[Path]:
        """Journals in `.caption/`, and beside the shards where an older version left them."""
        return sorted(
            [*self.state.glob(JOURNAL_GLOB), *self.path.glob(JOURNAL_GLOB)], key=lambda p: p.name
        )

    def shards(self) -> list[Path]:
        return sorted(self.path.glob(SHARD_GLOB))

    def result_schema(self) -> pa.Schema:
        """The schema of this folder's shards: the result columns, and `parsed` for a
        structured job (from run.json's job definition)."""
        meta = self.read_run_json() if self.run_json.exists() else None
        return result_schema((meta or {}).get("job"))

    # -- run.json ---------------------------------------------------------------------

    def read_run_json(self) -> dict[str, Any] | None:
        """run.json, checked for the shape every command relies on (a hand edit that
        breaks it is one error naming the file and the field, not a traceback later)."""
        try:
            data = json.loads(self.run_json.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UsageError(f"{self.run_json}: unreadable ({exc})") from None
        problem = _run_json_problem(data)
        if problem is not None:
            raise UsageError(
                f"{self.run_json}: {problem}; restore it from a backup, or remove the field "
                "(the next run writes it again)"
            )
        return data

    def write_run_json(self, data: dict[str, Any]) -> None:
        tmp = self.run_json.with_name(self.run_json.name + TMP_SUFFIX)
        try:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
            os.replace(tmp, self.run_json)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise storage_error(self.path, exc) from None

    def check_fingerprint(self, config: JobConfig) -> dict[str, Any] | None:
        """Refuse to mix answers of a different job into this folder; its run.json."""
        previous = self.read_run_json()
        if previous is not None:
            refuse_another_job(self.label, previous, config)
        return previous

    def check_ids(self, previous: dict[str, Any] | None, scheme: str) -> None:
        refuse_other_ids(self.label, previous, scheme)

    # -- manifest ---------------------------------------------------------------------

    def is_own_manifest(self, path: Path) -> bool:
        """Whether `path` is this folder's manifest, by today's name or the legacy one
        (which `migrate` may just have renamed)."""
        names = (self.state / MANIFEST_NAME, *self._legacy(MANIFEST_NAME))
        return os.path.abspath(path) in {str(p) for p in names}

    def staged_manifest(self) -> Path:
        """Where a new manifest is built before it replaces the old one (a leftover of
        a killed run is removed by `recover` with the other temporary files)."""
        return self.manifest.with_name(MANIFEST_NAME + ".new" + TMP_SUFFIX)

    def copy_in(self, source: str, target: Path) -> None:
        """A manifest given as the source, copied in (from a bucket too)."""
        try:
            if is_remote(source):
                download(source, str(target))
            else:
                shutil.copyfile(source, target)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise storage_error(self.path, exc) from None

    def adopt_manifest(self, staged: Path) -> None:
        """Make a staged manifest this job's manifest (renamed over the old one)."""
        try:
            os.replace(staged, self.manifest)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise storage_error(self.path, exc) from None

    # -- crash recovery and compaction ------------------------------------------------

    def remove_temporaries(self) -> None:
        """Remove what interrupted writes left: `*.tmp` files and ingest work folders."""
        for tmp in [*self.path.glob(f"*{TMP_SUFFIX}"), *self.state.glob(f"*{TMP_SUFFIX}")]:
            log.info("removing %s, left by an interrupted write", tmp.name)
            tmp.unlink()
        remove_stale_workdirs(self.manifest)

    def recover(self) -> None:
        """Remove temporary files of interrupted writes and fold journals into shards."""
        self.remove_temporaries()
        schema = self.result_schema()
        for journal in self.journals():
            shard = fold_journal(journal, schema)
            if shard is not None:
                log.info("recovered %s from the journal of an interrupted run", shard.name)

    # -- what is done -----------------------------------------------------------------

    def manifest_count(self) -> int:
        return pq.ParquetFile(self.manifest).metadata.num_rows


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "job": dict,
    "runs": list,
    "totals": dict,
    "sources": list,
    "ids": dict,
    "price": dict,
    "fingerprint": str,
}


def _run_json_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    for name, kind in _FIELDS.items():
        if name in data and not isinstance(data[name], kind):
            return f"{name!r} is not a JSON {'object' if kind is dict else 'array' if kind is list else 'string'}"
    if any(not isinstance(run, dict) for run in data.get("runs", [])):
        return "'runs' holds an entry that is not a JSON object"
    return None


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
