"""The id lookups of a big folder: resume's filter of the manifest and export's join.

    python bench/lookups.py [--rows 1000000 3000000]

Builds a synthetic finished folder per size (10,000-row shards, 1% error rows, ids made
as `ids` makes them), then times, in process: the books' scan; the manifest filtered by
the done ids, as `--retry-errors` and any resume with rows pending do; and export's join
of every shard with the manifest's columns. Both lookups were rebuilt per manifest batch
or per shard (quadratic: issue 26); the figures say whether time now grows linearly.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config.identity import fingerprint, job_definition
from pipeline.config.loading import load_config
from pipeline.output import books
from pipeline.output.export import joined
from pipeline.output.folder import OutputDir
from pipeline.output.layout import MANIFEST_NAME
from pipeline.output.marks import mark
from pipeline.records import RESULT_SCHEMA
from pipeline.sources.manifest import read_manifest

PER_SHARD = 10_000


def build(out: Path, rows: int) -> None:
    (out / ".caption").mkdir(parents=True)
    ids = np.array([f"{i * 2654435761 % (1 << 64):016x}" for i in range(rows)])
    sources = np.array([f"https://img.example.com/{i:09d}.jpg" for i in range(rows)])
    pq.write_table(pa.table({"id": ids, "source": sources}), out / ".caption" / MANIFEST_NAME)
    now = int(time.time() * 1000)
    for shard, start in enumerate(range(0, rows, PER_SHARD)):
        n = min(PER_SHARD, rows - start)
        error = (np.arange(start, start + n) % 100) == 0
        given = {
            "id": pa.array(ids[start : start + n]),
            "source": pa.array(sources[start : start + n]),
            "status": pa.array(np.where(error, "error", "ok")),
            "caption": pa.array([f"A photo of item {i}." for i in range(start, start + n)]),
            "cost_usd": pa.array(np.full(n, 0.0022)),
            "finished_at": pa.array(np.full(n, now), pa.timestamp("ms", tz="UTC")),
            "error_kind": pa.array([("rejected" if e else None) for e in error], pa.string()),
        }
        columns = [
            given[f.name].cast(f.type) if f.name in given else pa.nulls(n, f.type)
            for f in RESULT_SCHEMA
        ]
        table = pa.Table.from_arrays(columns, schema=RESULT_SCHEMA)
        pq.write_table(table, out / f"part-{shard:05d}.parquet")
    job = job_definition(load_config(None, {"endpoint": "fake"}))
    meta = {"version": 1, "fingerprint": fingerprint(job), "job": job, "runs": []}
    (out / ".caption" / "run.json").write_text(json.dumps(meta))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 3_000_000])
    args = parser.parse_args()
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            out = OutputDir(Path(tmp) / "out")
            build(out.path, rows)
            started = time.perf_counter()
            done = books.scan(out)
            scan = time.perf_counter() - started
            started = time.perf_counter()
            pending = sum(
                1 for _ in read_manifest(out.manifest, skip=mark(out.manifest, done.ids).ok)
            )
            resume = time.perf_counter() - started
            started = time.perf_counter()
            exported = sum(t.num_rows for t in joined(out))
            export = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{rows:>11,} rows: scan {scan:5.1f} s; resume filter ({pending:,} pending) "
            f"{resume:5.1f} s; export join ({exported:,} rows) {export:5.1f} s; "
            f"peak {peak:,.0f} MiB so far",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
