"""Every command around a big output folder: time and peak memory, 1M and 10M rows.

    python bench/bigfolder.py [--rows 1000000 10000000] [--hundred-million]

For each size, builds a synthetic folder the tool accepts as its own (10,000-row shards,
ids made as `ids` makes them), then runs each command as a child process and prints its
wall time and peak RSS. So that the figures measure the folder, not the endpoint, the
rows to send are a fixed 2,000 at every size (sent to the fake endpoint):

- rerun, nothing pending: a folder whose every manifest row is done;
- rerun, 2,000 pending: every done id filtered out of the manifest, 2,000 rows sent;
- `--retry-errors`: 2,000 error rows spread over the whole folder (one in every
  `rows / 2,000`) sent again, then compaction moves the rows they replace to the
  ledger, rewriting every shard that held one;
- compaction: the same 2,000 rows answered again in a shard of their own, as a retry
  cut short leaves them; the next run's start moves the old rows to the ledger;
- `caption status --json`, `caption report`, `caption export` to Parquet.

`--hundred-million` adds 100M rows (about 40 GB of disk and most of an hour to build).
Issue 26 asks that at 10M every command finish in under a minute and 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure

from pipeline.config.identity import fingerprint, job_definition
from pipeline.config.loading import load_config
from pipeline.output.layout import MANIFEST_NAME
from pipeline.output.totals import with_totals
from pipeline.records import RESULT_SCHEMA

PER_SHARD = 10_000
CAPTION = [sys.executable, "-m", "pipeline"]


def _ids(numbers: np.ndarray) -> pa.Array:
    """16 hex digits per row, distinct, spread over all 64 bits as path hashes are (row
    number times an odd constant, modulo 2**64)."""
    n = numbers.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93) + np.uint64(12345)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nibbles = (n[:, None] >> (np.arange(15, -1, -1, dtype=np.uint64) * np.uint64(4))) & np.uint64(
        15
    )
    chars = digits[nibbles.astype(np.int64)]
    return pa.array(chars.view("S16").ravel().astype(str))


SENT = 2_000


def build(out: Path, rows: int, done_rows: int) -> None:
    """A folder of `rows` manifest rows, the first `done_rows` of them answered, with
    `SENT` error rows spread evenly."""
    (out / ".caption").mkdir(parents=True)
    now = int(time.time() * 1000)
    schema = pa.schema([pa.field("id", pa.string()), pa.field("source", pa.string())])
    with pq.ParquetWriter(out / ".caption" / MANIFEST_NAME, schema) as manifest:
        for start in range(0, rows, PER_SHARD * 10):
            stop = min(rows, start + PER_SHARD * 10)
            sources = [f"https://img.example.com/{i:09d}.jpg" for i in range(start, stop)]
            ids = _ids(np.arange(start, stop))
            manifest.write_table(pa.table({"id": ids, "source": sources}, schema))
    for shard, start in enumerate(range(0, done_rows, PER_SHARD)):
        stop = min(done_rows, start + PER_SHARD)
        rows_here = np.arange(start, stop)
        error = (rows_here % (rows // SENT)) == 0
        _write_shard(out / f"part-{shard:05d}.parquet", rows_here, error, now)
    job = job_definition(load_config(None, {"endpoint": "fake"}))
    meta = {"version": 1, "fingerprint": fingerprint(job), "job": job, "runs": [],
            "ids": {"from": "manifest", "version": 2}}  # fmt: skip
    (out / ".caption" / "run.json").write_text(json.dumps(meta))


def _write_shard(path: Path, numbers: np.ndarray, error: np.ndarray, now: int) -> None:
    """A shard of the rows `numbers`, those in `error` answered with an error."""
    n = len(numbers)
    given = {
        "id": _ids(numbers),
        "source": pa.array([f"https://img.example.com/{i:09d}.jpg" for i in numbers]),
        "status": pa.array(np.where(error, "error", "ok")),
        "caption": pa.array([f"A photo of item {i}." for i in numbers]),
        "prompt_tokens": pa.array(np.full(n, 440)),
        "completion_tokens": pa.array(np.full(n, 12)),
        "cost_usd": pa.array(np.full(n, 0.0012)),
        "finished_at": pa.array(np.full(n, now), pa.timestamp("ms", tz="UTC")),
        "error_kind": pa.array(np.where(error, "rejected", None)),
    }
    columns = [
        given[f.name].cast(f.type) if f.name in given else pa.nulls(n, f.type)
        for f in RESULT_SCHEMA
    ]
    table = pa.Table.from_arrays(columns, schema=RESULT_SCHEMA)
    # As the writer writes a shard: its totals in its footer (output/totals.py).
    pq.write_table(with_totals(table), path)


def answered_again(out: Path, rows: int) -> None:
    """The `SENT` error rows answered again, a second later, in a shard of their own and
    not yet compacted (as a retry cut short or a retried Ray block leaves a folder): the
    next run's start moves each old row to the ledger, rewriting every shard."""
    again = np.arange(0, rows, rows // SENT)[:SENT]
    later = int(time.time() * 1000) + 1000
    _write_shard(out / "part-99999.parquet", again, np.zeros(len(again), bool), later)


def _row(label: str, cmd: list[str], env: dict[str, str]) -> None:
    m = measure(cmd, env=env)
    ok = "" if m.returncode in (0, 1) else f"  (exit {m.returncode})"
    print(f"  {label:32s} {m.wall_s:7.1f} s  {m.peak_rss_mb:7,.0f} MB{ok}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--hundred-million", action="store_true")
    parser.add_argument("--keep", type=Path, help="build under this folder and keep it")
    args = parser.parse_args()
    sizes = [*args.rows, *([100_000_000] if args.hundred_million else [])]
    import os

    env = {**os.environ, "MEMORIES_API_KEY": "bench"}
    for rows in sizes:
        base = Path(tempfile.mkdtemp(dir=args.keep))
        try:
            started = time.perf_counter()
            full, partial = base / "full", base / "partial"
            build(full, rows, rows)
            build(partial, rows, rows - SENT)
            print(f"{rows:,} rows (built in {time.perf_counter() - started:.0f} s):", flush=True)
            for label, folder, extra in (
                ("rerun, nothing pending", full, []),
                (f"rerun, {SENT:,} pending", partial, []),
                ("--retry-errors", full, ["--retry-errors"]),
            ):
                manifest = str(folder / ".caption" / MANIFEST_NAME)
                cmd = [*CAPTION, "run", manifest, "-o", str(folder), "--endpoint", "fake"]
                _row(label, [*cmd, "--quiet", *extra], env)
            answered_again(partial, rows)
            manifest = str(partial / ".caption" / MANIFEST_NAME)
            cmd = [*CAPTION, "run", manifest, "-o", str(partial), "--endpoint", "fake", "--quiet"]
            _row(f"compaction, {SENT:,} superseded", cmd, env)
            _row("status --json", [*CAPTION, "status", str(full), "--json"], env)
            report = str(base / "report.html")
            _row("report", [*CAPTION, "report", str(full), "-o", report], env)
            export = str(base / "all.parquet")
            _row("export (parquet)", [*CAPTION, "export", str(full), "-o", export], env)
        finally:
            if args.keep is None:
                shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
