"""`--dedupe near`: how far apart near-copies and distinct photos hash, and how long
grouping takes at scale.

    python bench/neardedupe.py [--scenes 300] [--copies 6] [--photos DIR]
                               [--rows 100000 1000000] [--skip-hashes]

1. Distances. Distinct photo-like scenes (`pipeline/testing/photos.py`), each saved as a
   JPEG, plus near-copies of each (resized 50-90%, JPEG quality 60-95, cropped and/or
   shifted by up to 4 px); with --photos, the images of a folder of real photos too. For
   each distance from 4 to 10: pairs of distinct images that would merge (false merges),
   and copies that would not join their original (missed). The default distance is the
   smallest with no missed copy and no false merge here.
2. Grouping time. Synthetic hash pairs for N rows (uniform random, like distinct images,
   with 10% near-copies: 4 flipped bits in each hash), grouped in a child process: all
   rows new (a first run), then 1% new against the rest (a nightly run). Prints time,
   peak RSS, pairs found and the multi-index plan.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._measure import measure

GROUP = """
import json, sys, time
import numpy as np
from pipeline.dedupe.groups import _plan, components, near_pairs
n, new = int(sys.argv[1]), float(sys.argv[2])
rng = np.random.default_rng(0)
h = rng.integers(0, 2**64, n, dtype=np.uint64)
c = rng.integers(0, 2**64, n, dtype=np.uint64)
k = n // 10
src = rng.integers(0, n - k, k)
for arr in (h, c):
    flips = np.zeros(k, dtype=np.uint64)
    for _ in range(4):
        flips ^= np.uint64(1) << rng.integers(0, 64, k).astype(np.uint64)
    arr[n - k:] = arr[src] ^ flips
queries = None if new >= 1 else rng.choice(n, int(n * new), replace=False)
t = time.perf_counter()
pairs = near_pairs(h, c, 8, queries)
labels = components(n, pairs)
plan = _plan(n if queries is None else len(queries), n, 8)
print(json.dumps({"s": time.perf_counter() - t, "pairs": len(pairs),
                  "plan": f"{plan.bands} bands, radius {plan.radius}"}))
"""


def distances(scenes: int, copies: int, photos: Path | None) -> None:
    from PIL import Image

    from pipeline.dedupe.phash import image_hashes
    from pipeline.testing.photos import jpeg, near_copy, scene

    sets = {"scenes": [(f"scene{i}", jpeg(scene(i))) for i in range(scenes)]}
    if photos is not None:
        sets["photos"] = [(p.name, p.read_bytes()) for p in sorted(photos.iterdir()) if p.is_file()]

    def far(a: tuple[int, int], b: tuple[int, int]) -> int:
        return max(bin(a[0] ^ b[0]).count("1"), bin(a[1] ^ b[1]).count("1"))

    for name, images in sets.items():
        hashes = [image_hashes(data) for _, data in images]
        if any(h is None for h in hashes):
            print(f"{name}: unreadable images left out")
        pairs = [
            (hashes[i], hashes[j])
            for i, j in itertools.combinations(range(len(images)), 2)
            if hashes[i] and hashes[j]
        ]
        distinct = [far(a, b) for a, b in pairs]  # type: ignore[arg-type]
        copied = []
        for i, (label, data) in enumerate(images):
            original = hashes[i]
            if original is None:
                continue
            with Image.open(io.BytesIO(data)) as im:
                for k in range(copies):
                    h = image_hashes(near_copy(im, 7919 * i + k))
                    if h is not None:
                        copied.append((far(original, h), label))
        print(
            f"{name}: {len(images)} images, {len(distinct)} distinct pairs "
            f"(closest {sorted(distinct)[:5]}), {len(copied)} near-copies "
            f"(median {sorted(d for d, _ in copied)[len(copied) // 2]} bits)"
        )
        for t in range(4, 11):
            missed = sorted({label for d, label in copied if d > t})
            shown = f" ({', '.join(missed[:6])}{'...' if len(missed) > 6 else ''})"
            print(
                f"  distance {t:2d}: {sum(d <= t for d in distinct)} false merges, "
                f"{sum(d > t for d, _ in copied)} of {len(copied)} copies missed"
                + (shown if missed and name != "scenes" else "")
            )


def grouping(rows: list[int]) -> None:
    print("grouping (distance 8; 10% near-copies), in a child process:")
    for n in rows:
        for new, label in ((1.0, "all new"), (0.01, "1% new")):
            m = measure([sys.executable, "-c", GROUP, str(n), str(new)])
            if m.returncode:
                print(f"  {n:>11,} rows {label}: failed ({m.returncode})")
                continue
            out = json.loads(m.stdout)
            print(
                f"  {n:>11,} rows, {label:8s}: {out['s']:7.1f} s grouping, "
                f"{m.peak_rss_mb:7.0f} MB peak RSS, {out['pairs']:,} pairs ({out['plan']})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--photos", type=Path)
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--skip-hashes", action="store_true")
    args = parser.parse_args()
    if not args.skip_hashes:
        distances(args.scenes, args.copies, args.photos)
    grouping(args.rows)


if __name__ == "__main__":
    main()
