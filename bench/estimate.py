"""Speed and memory of `caption estimate`.

    python bench/estimate.py [--urls 1000000] [--local 100000]

1. A manifest of 1,000,000 URLs with width/height columns, estimated for three models.
   Target (issue 5): flat memory, well under 30 s.
2. A folder of 100,000 local images (sizes read from headers). Target: seconds, not minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def url_manifest(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        ids = [f"{i:016x}" for i in range(start, start + n)]
        table = pa.table(
            {
                "id": ids,
                "source": [f"https://img.example.com/{i}.jpg" for i in ids],
                "width": rng.integers(64, 6000, n),
                "height": rng.integers(64, 6000, n),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def estimate(args: list[str]) -> None:
    m = measure([sys.executable, "-m", "pipeline", "estimate", *args, "--json"])
    if m.returncode != 0:
        raise SystemExit(f"estimate failed with exit code {m.returncode}")
    report = json.loads(m.stdout)
    images = report["models"][0]["images"]
    print(
        f"  images={images} wall_s={m.wall_s:.2f} cpu_s={m.cpu_s:.2f} "
        f"peak_rss_mb={m.peak_rss_mb:.0f} sizes={report['sizes']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", type=int, default=1_000_000)
    parser.add_argument("--local", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "urls.parquet"
        url_manifest(manifest, args.urls)
        print(f"URL manifest with width/height, {args.urls} rows, 3 models:")
        estimate(
            [str(manifest), "--model", "gpt-4o", "--model", "gpt-5-nano", "--model", "gpt-4.1-mini"]
        )

        folder = Path(tmp) / "imgs"
        folder.mkdir()
        samples = sorted(p for p in SAMPLES.rglob("*.*") if p.stat().st_size < 20_000)
        for i in range(args.local):
            src = samples[i % len(samples)]
            shutil.copyfile(src, folder / f"{i:07d}{src.suffix}")
        print(f"folder of {args.local} local images (headers read), 1 model:")
        estimate([str(folder)])


if __name__ == "__main__":
    main()
