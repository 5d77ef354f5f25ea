"""The Ray executor against the local one, on this machine.

    python bench/scale.py [--images 2000] [--photos 24]

1. Overhead: rows/s for small images (the samples, copied) against the fake endpoint at
   20 ms latency, local executor against Ray with 2 workers.
2. CPU-heavy preparation: 12 MP photos with --resize model (bench/bandwidth.py's camera
   photos), Ray with 1 worker against 2 workers. Each worker resizes on every core
   (`engine/prepare.py`'s process pool), so on a 2-core machine the second worker adds
   little: the figure says how much.
3. The global limiter: a server allowing 200 requests/s, --rpm 12000, 2 workers: the
   share of requests it refused, and the rate achieved.

Each run is a child process; Ray's start-up (about 4 s here) is in its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure
from bandwidth import camera_jpeg
from throughput import free_port, wait_for_port

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def serve(*options: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-endpoint", "--port", str(port), *options],
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return proc, f"http://127.0.0.1:{port}/chat/completions"


def run(source: Path, out: Path, url: str, *extra: str) -> tuple[float, dict]:
    env = {**os.environ, "MEMORIES_API_KEY": "bench", "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "pipeline", "run", str(source), "-o", str(out)]
    m = measure([*cmd, "--endpoint", url, "--quiet", *extra], env=env)
    if m.returncode not in (0, 1):
        raise SystemExit(f"run failed: exit {m.returncode}: {m.stdout}")
    return m.wall_s, json.loads((out / ".caption" / "run.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--photos", type=int, default=24)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="caption-scale-"))
    try:
        small = tmp / "small"
        small.mkdir()
        files = [p for p in SAMPLES.rglob("*") if p.is_file()]
        for i in range(args.images):  # distinct bytes: a comment appended after the image
            data = files[i % len(files)].read_bytes()
            (small / f"{i:06d}{files[i % len(files)].suffix}").write_bytes(data + f"#{i}".encode())
        server, url = serve("--latency", "0.02")
        try:
            for label, extra in (
                ("local", []),
                ("ray, 2 workers", ["--executor", "ray", "--workers", "2"]),
            ):
                wall, _ = run(small, tmp / f"out-{label[:3]}", url, "--concurrency", "64", *extra)
                print(
                    f"{args.images} small images, {label:>14}: {args.images / wall:7.1f} rows/s ({wall:.1f} s)"
                )
        finally:
            server.terminate()

        photos = tmp / "photos"
        photos.mkdir()
        for i in range(args.photos):
            (photos / f"IMG_{i:04d}.jpg").write_bytes(camera_jpeg(i))
        server, url = serve()
        try:
            for workers in (1, 2):
                wall, _ = run(photos, tmp / f"photos-{workers}", url, "--resize", "model",
                              "--executor", "ray", "--workers", str(workers))  # fmt: skip
                print(f"{args.photos} photos, --resize model, ray {workers} worker(s): "
                      f"{args.photos / wall:5.2f} images/s ({wall:.1f} s)")  # fmt: skip
        finally:
            server.terminate()

        server, url = serve("--rate-limit", "200")
        try:
            wall, _ = run(small, tmp / "limited", url, "--rpm", "12000", "--concurrency", "64",
                             "--executor", "ray", "--workers", "2")  # fmt: skip
            with urllib.request.urlopen(url.replace("/chat/completions", "/stats")) as r:
                stats = json.loads(r.read())
            refused = stats["refused"] / max(stats["requests"], 1)
            print(f"server capped at 200 req/s, --rpm 12000, ray 2 workers: {refused:.2%} refused "
                  f"({stats['refused']} of {stats['requests']}), {args.images / wall:.0f} rows/s "
                  f"with start-up")  # fmt: skip
        finally:
            server.terminate()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
