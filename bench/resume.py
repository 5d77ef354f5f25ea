"""Start-up cost of resuming, and `caption status`, on a 100,000-row output folder.

    python bench/resume.py [--rows 100000] [--rows-per-shard 10000]

Builds a finished output folder (.caption/manifest.pq, shards, .caption/run.json) of the given size, then times:
- the done-row scan a rerun does before sending anything (recover, compact, scan, count
  pending), in process;
- a whole `caption run` rerun that finds nothing to do (a child process);
- `caption status OUT_DIR --json` (a child process).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure

from pipeline.config.identity import fingerprint, job_definition
from pipeline.config.loading import load_config
from pipeline.output import books
from pipeline.output.folder import OutputDir
from pipeline.output.layout import MANIFEST_NAME
from pipeline.output.marks import mark
from pipeline.records import RESULT_SCHEMA
from pipeline.sources.ids import stable_id


def build(out: Path, rows: int, per_shard: int) -> None:
    (out / ".caption").mkdir(parents=True)
    ids = [stable_id(f"https://img.example.com/{i:08d}.jpg") for i in range(rows)]
    sources = [f"https://img.example.com/{i:08d}.jpg" for i in range(rows)]
    pq.write_table(pa.table({"id": ids, "source": sources}), out / ".caption" / MANIFEST_NAME)
    now = int(time.time() * 1000)
    for shard, start in enumerate(range(0, rows, per_shard)):
        n = min(per_shard, rows - start)
        cols = {
            "id": ids[start : start + n],
            "source": sources[start : start + n],
            "status": ["ok" if (start + i) % 50 else "error" for i in range(n)],
            "caption": [f"A photo of item {start + i}." for i in range(n)],
            "prompt_tokens": [800] * n,
            "completion_tokens": [20] * n,
            "total_tokens": [820] * n,
            "cost_usd": [0.0022] * n,
            "attempts": [1] * n,
            "latency_s": [1.5] * n,
            "finished_at": [now] * n,
            "error_kind": [None if (start + i) % 50 else "rejected" for i in range(n)],
        }
        table = pa.Table.from_pylist(
            [{k: v[i] for k, v in cols.items()} for i in range(n)], schema=RESULT_SCHEMA
        )
        pq.write_table(table, out / f"part-{shard:05d}.parquet")
    definition = job_definition(load_config(None, {"endpoint": "fake"}))
    (out / ".caption/run.json").write_text(
        json.dumps(
            {"version": 1, "fingerprint": fingerprint(definition), "job": definition, "runs": []}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        build(out, args.rows, args.rows_per_shard)
        print(f"output folder: {args.rows} rows in {len(list(out.glob('part-*.parquet')))} shards")

        start = time.perf_counter()
        folder = OutputDir(out)
        folder.recover()
        books.compact(folder)
        done = books.scan(folder)
        pending = mark(folder.manifest, done.ids).pending
        scan_s = time.perf_counter() - start
        print(
            f"done-row scan at start-up: {scan_s:.3f} s ({done.ok} ok, {done.errors} errors, "
            f"{pending} pending)"
        )

        rerun = measure(
            [
                sys.executable,
                "-m",
                "pipeline",
                "run",
                str(out / ".caption" / MANIFEST_NAME),
                "-o",
                str(out),
                "--endpoint",
                "fake",
                "--quiet",
            ]
        )
        print(
            f"caption run (nothing to do): wall {rerun.wall_s:.2f} s, cpu {rerun.cpu_s:.2f} s, "
            f"peak RSS {rerun.peak_rss_mb:.0f} MB, exit {rerun.returncode}"
        )

        status = measure([sys.executable, "-m", "pipeline", "status", str(out), "--json"])
        report = json.loads(status.stdout)
        print(
            f"caption status: wall {status.wall_s:.2f} s, cpu {status.cpu_s:.2f} s, "
            f"peak RSS {status.peak_rss_mb:.0f} MB (done {report['done']}, "
            f"pending {report['pending']})"
        )


if __name__ == "__main__":
    main()
