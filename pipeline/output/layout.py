"""Every file of an output folder, named here once.

    OUT/part-N.parquet                   complete result shards: all a reader sees
    OUT/part-r<run>-<block>-N.parquet    a Ray task's shards (`block_prefix`)
    OUT/part-unpushed-<hex>.parquet      a bucket mirror's shard the bucket differed on
    OUT/.caption/manifest.pq             the manifest the job runs over (Parquet)
    OUT/.caption/run.json                the job's definition, fingerprint and totals
    OUT/.caption/part-N.journal.jsonl    the shard being written (folded on restart)
    OUT/.caption/superseded-N.ledger     paid attempts a later answer replaced
    OUT/.caption/mirror.json             a bucket folder's mirror: what the bucket holds
    OUT/.caption/workers.lock            held shared by a Ray run's tasks
    OUT/.lock                            held by the run writing the folder (flock; in a
                                         bucket, a folder of lock generations `g-N`)

Everything but the result shards lives in the hidden `.caption/`: pandas and pyarrow
skip it when reading the folder, and `OUT/*.parquet` (duckdb, polars) matches the shards
alone. No file but a shard ends in `.parquet`, so `OUT/**/*.parquet`, which does descend
into hidden folders, matches the shards alone too. Older versions kept the manifest,
run.json and journals beside the shards, and then the manifest as
`.caption/manifest.parquet`; they are still read, and moved by the next run.
"""

from __future__ import annotations

import re

STATE_DIR = ".caption"
SHARD_SUFFIX = ".parquet"
SHARD_GLOB = f"part-*{SHARD_SUFFIX}"
JOURNAL_SUFFIX = ".journal.jsonl"
JOURNAL_GLOB = f"part-*{JOURNAL_SUFFIX}"
TMP_SUFFIX = ".tmp"
MANIFEST_NAME = "manifest.pq"
LEGACY_MANIFEST_NAME = "manifest.parquet"  # beside the shards, then in .caption/
RUN_JSON = "run.json"
LOCK_NAME = ".lock"
LOCK_GENERATION_PREFIX = "g-"
WORKERS_LOCK = "workers.lock"
PUSHED = "mirror.json"
LEDGER_GLOB = "superseded-*.ledger"
UNPUSHED_PREFIX = "part-unpushed-"

SEQUENCE = re.compile(r"^part-(\d+)")  # a shard's or journal's number
IS_SHARD = re.compile(r"part-.*\.parquet$")
# The state files a bucket mirror copies (the lock and its own record are not).
IS_STATE_FILE = re.compile(
    r"(run\.json|manifest\.pq|manifest\.parquet|part-.*\.journal\.jsonl|superseded-\d+\.ledger)$"
)


def ledger_name(number: int) -> str:
    return f"superseded-{number:05d}.ledger"


def block_prefix(block: str) -> str:
    """The name every file of a Ray task's block starts with (`block` is `<run>-<n>`)."""
    return f"part-r{block}"


def shard_of_journal(journal_name: str) -> str:
    return journal_name.removesuffix(JOURNAL_SUFFIX) + SHARD_SUFFIX
