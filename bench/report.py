"""Time `caption report` on a large output folder.

    python bench/report.py [--rows 100000] [--rows-per-shard 10000]

Builds a synthetic folder (bench/resume.py's: URL sources, 2% error rows), then runs
`caption report` in a child process: wall time, CPU and peak RSS. The sample's
thumbnails are skipped for URLs (the report never downloads), so this measures the
aggregation. Target (issue 15): a few seconds for a million rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure
from resume import build


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rows-per-shard", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        build(out, args.rows, args.rows_per_shard)
        page = Path(tmp) / "report.html"
        m = measure([sys.executable, "-m", "pipeline", "report", str(out), "-o", str(page)])
        if m.returncode != 0:
            raise SystemExit(f"report failed: exit {m.returncode}")
        print(
            f"report of {args.rows:,} rows: {m.wall_s:.2f} s wall, {m.cpu_s:.2f} CPU s, "
            f"peak RSS {m.peak_rss_mb:.0f} MB, page {page.stat().st_size / 1024:.0f} KB"
        )


if __name__ == "__main__":
    main()
