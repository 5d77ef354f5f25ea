"""Buckets against local disk: images/s from a local S3 server (moto) and from a folder
holding the same images, and the peak memory of listing 100,000 objects.

    python bench/cloud.py [--images 400] [--objects 100000] [--concurrency 32]

Both runs caption the same images against the built-in fake endpoint (`--endpoint fake`,
no latency), each a child process, so the difference is reading the images: from disk,
or from the S3 server over HTTP (fetched 16 at a time). The S3 server runs in this
process; its objects are put straight into moto's backend, so that 100,000 of them take
seconds to set up rather than minutes of PUTs.

The listing is measured in a child process: the peak Python memory (tracemalloc) of
walking the prefix with `storage.walk_prefix` (one page of 1,000 keys at a time) against
`fs.find` (the whole listing at once).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure

LISTER = textwrap.dedent(
    """
    import sys, tracemalloc
    from pipeline.io import storage
    fs = storage.filesystem("s3://x")
    tracemalloc.start()
    if sys.argv[1] == "stream":
        n = sum(1 for _ in storage.walk_prefix("s3://" + sys.argv[2], lambda name: True))
    else:
        n = len(fs.find(sys.argv[2]))
    print(n, tracemalloc.get_traced_memory()[1] / 2**20)
    """
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.backends import get_backend
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    backend = get_backend("s3")["123456789012"]["global"]
    backend.create_bucket("bench", "us-east-1")

    tmp = Path(tempfile.mkdtemp(prefix="caption-bench-"))
    try:
        folder = tmp / "imgs"
        folder.mkdir()
        for i in range(args.images):
            buf = io.BytesIO()  # noise: about 50 KB, like a small photo's PNG
            Image.frombytes("RGB", (128, 128), os.urandom(128 * 128 * 3)).save(buf, "PNG")
            (folder / f"img_{i:05d}.png").write_bytes(buf.getvalue())
            backend.put_object("bench", f"imgs/img_{i:05d}.png", buf.getvalue())
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{args.images} images, {size / args.images / 1024:.1f} KB each on average")

        rates = {}
        for label, source in (("local disk", str(folder)), ("S3 (moto)", "s3://bench/imgs")):
            run_env = {**env, "CAPTION_CACHE_DIR": str(tmp / "cache")}
            out = tmp / f"out-{len(rates)}"
            cmd = [sys.executable, "-m", "pipeline", "run", source, "-o", str(out)]
            cmd += ["--endpoint", "fake", "--concurrency", str(args.concurrency), "--quiet"]
            m = measure(cmd, env=run_env)
            if m.returncode != 0:
                raise SystemExit(f"{label}: exit {m.returncode}: {m.stdout}")
            rates[label] = args.images / m.wall_s
            print(
                f"{label:>11}: {rates[label]:7.1f} images/s  ({m.wall_s:.2f} s wall, "
                f"{m.cpu_s:.2f} CPU s, peak RSS {m.peak_rss_mb:.0f} MB)"
            )
        print(f"S3 / local: {rates['S3 (moto)'] / rates['local disk']:.2f}x")

        for i in range(args.objects):
            backend.put_object("bench", f"many/{i // 1000:03d}/obj_{i:07d}.png", b"x")
        for how in ("stream", "find"):
            m = measure([sys.executable, "-c", LISTER, how, "bench/many"], env=env)
            count, grown = m.stdout.split()
            name = "walk_prefix" if how == "stream" else "fs.find"
            print(
                f"listing {int(count):,} objects with {name}: {m.wall_s:.1f} s, "
                f"peak Python memory while listing {float(grown):.1f} MB"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        server.stop()


if __name__ == "__main__":
    main()
