"""Ingest of 1,000,000 URL lines: wall time and peak RSS of `caption ingest`.

    python bench/ingest.py [--rows 1000000]

Target (issue 2): well under 400 MB RSS and 30 s on the project machine (2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp) / "urls.txt"
        with open(lst, "w") as f:
            for i in range(args.rows):
                f.write(f"https://images.example.com/bucket/{i // 1000:04d}/img_{i:08d}.jpg\n")
        out = Path(tmp) / "manifest.parquet"
        m = measure([sys.executable, "-m", "pipeline", "ingest", str(lst), "-o", str(out)])
        if m.returncode != 0:
            raise SystemExit(f"ingest failed with exit code {m.returncode}")
        rows = pq.ParquetFile(out).metadata.num_rows
        print(
            f"rows={rows} wall_s={m.wall_s:.2f} cpu_s={m.cpu_s:.2f} peak_rss_mb={m.peak_rss_mb:.0f}"
        )
        print(f"rows_per_s={rows / m.wall_s:,.0f}")


if __name__ == "__main__":
    main()
