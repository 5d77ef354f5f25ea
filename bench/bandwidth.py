"""Camera photos over a slow upload link, with and without `--resize model`.

    python bench/bandwidth.py [--images 24] [--mbps 50] [--latency 0.5] [--concurrency 16]

Generates camera-like 12 MP JPEGs (4000x3000: smooth scenes with sensor grain, about
5 MB each), serves the fake endpoint with one shared `--uplink-mbps` cap on the request
bodies it reads, and runs the same job twice, each a child process: the originals byte
for byte, then `--resize model` (gpt-4o at detail auto: 1024x768). Prints images/s,
bytes sent and the billed prompt tokens of each; the CPU seconds a resize costs per
image (Pillow's JPEG draft mode against a plain decode); and peak RSS of the resized job
at concurrency 64. Targets (issue 13): >= 6x the images/s, >= 10x fewer bytes, the same
tokens.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure
from throughput import free_port, wait_for_port


def camera_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    scene = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(scene).resize((4000, 3000), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 8, (3000, 4000, 3))
    pixels = np.clip(smooth.astype(np.float32) + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def resize_cpu(paths: list[Path]) -> tuple[float, float]:
    """CPU seconds per image: reduce_image (draft mode), and a full decode + resize."""
    from pipeline.engine.resize import reduce_image

    start = time.process_time()
    for path in paths:
        reduce_image(path.read_bytes(), (1024, 768))
    draft = (time.process_time() - start) / len(paths)
    start = time.process_time()
    for path in paths:
        with Image.open(path) as im:
            im.convert("RGB").resize((1024, 768), Image.Resampling.LANCZOS)
    plain = (time.process_time() - start) / len(paths)
    return draft, plain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)  # 16 to 40
    parser.add_argument("--mbps", type=float, default=50.0)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        for i in range(args.images):
            (args.generate / f"IMG_{i:04d}.jpg").write_bytes(camera_jpeg(i))
        return

    tmp = Path(tempfile.mkdtemp(prefix="caption-bandwidth-"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "fake-endpoint", "--port", str(port),
         "--latency", str(args.latency), "--uplink-mbps", str(args.mbps)],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        photos = tmp / "photos"
        photos.mkdir()
        # In a child: its numpy buffers would otherwise count in every run's peak RSS
        # (a fork's child starts with the parent's resident pages).
        subprocess.run(
            [sys.executable, __file__, "--generate", str(photos), "--images", str(args.images)],
            check=True,
        )
        paths = sorted(photos.iterdir())
        size = sum(p.stat().st_size for p in paths)
        print(f"{args.images} photos of 4000x3000, {size / args.images / 1e6:.1f} MB each; "
              f"uplink {args.mbps:g} Mbit/s, latency {args.latency:g} s")  # fmt: skip
        wait_for_port(port)
        env = {**os.environ, "MEMORIES_API_KEY": "bench"}
        url = f"http://127.0.0.1:{port}/chat/completions"
        rates = {}
        sent = {}
        for label, extra, concurrency in (
            ("originals", [], args.concurrency),
            ("--resize model", ["--resize", "model"], args.concurrency),
            ("--resize model, concurrency 64", ["--resize", "model"], 64),
        ):
            out = tmp / f"out-{len(rates)}"
            cmd = [sys.executable, "-m", "pipeline", "run", str(photos), "-o", str(out),
                   "--endpoint", url, "--concurrency", str(concurrency), "--quiet", *extra]  # fmt: skip
            m = measure(cmd, env=env)
            if m.returncode != 0:
                raise SystemExit(f"{label}: exit {m.returncode}: {m.stdout}")
            meta = json.loads((out / ".caption" / "run.json").read_text())
            run = meta["runs"][-1]
            rates[label] = args.images / m.wall_s
            sent[label] = run["bytes_sent"]
            print(
                f"{label:>31}: {rates[label]:6.2f} images/s, {run['bytes_sent'] / 1e6:7.1f} MB sent, "
                f"{run['prompt_tokens']} prompt tokens, {m.wall_s:5.1f} s, {m.cpu_s:5.1f} CPU s, "
                f"peak RSS {m.peak_rss_mb:.0f} MB"
            )
        print(
            f"resize: {rates['--resize model'] / rates['originals']:.1f}x the images/s, "
            f"{sent['originals'] / sent['--resize model']:.1f}x fewer bytes"
        )
        draft, plain = resize_cpu(paths[:8])
        print(f"CPU per 12 MP photo: {draft:.3f} s with draft mode, {plain:.3f} s decoding it all")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
