"""Throughput of `caption run` against a minimal aiohttp + semaphore client, in one run.

    python bench/throughput.py [--images 5000] [--concurrency 64] [--latency 0.02]

Both send the same requests (one chat completion per image, the image as a base64 data
URL) to the same fake endpoint (`caption fake-endpoint`, in its own process) at 20 ms of
latency. The minimal client writes nothing; the pipeline writes journals, shards and
run.json. Each is a separate child process, so CPU seconds and peak RSS are its own.

Both run --repeat times, alternating, and the medians are compared. Each first runs once
on one image, unmeasured, so that both run from compiled bytecode as an installed tool
does: with PYTHONDONTWRITEBYTECODE set (this machine sets it) an editable install would
otherwise recompile the package on every run, about 0.09 CPU s that no user pays.
Target (issue 3): the pipeline's rate >= 0.9x the minimal client's, CPU <= 1.2x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from statistics import median

import pyarrow.compute as pc
import pyarrow.dataset as ds
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Measured, measure

MINIMAL_CLIENT = textwrap.dedent(
    """
    import asyncio, base64, json, os, sys
    import aiohttp

    url, folder, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder))

    def body(path):
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        return json.dumps({
            "model": "gpt:gpt-4o",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Describe this image in one concise sentence."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}},
            ]}],
            "max_tokens": 1000, "n": 1, "stream": False,
        }).encode()

    async def main():
        loop = asyncio.get_running_loop()
        start = loop.time()
        sem = asyncio.Semaphore(concurrency)
        headers = {"Authorization": "bench-key", "Content-Type": "application/json"}
        ok = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
            async def one(path):
                nonlocal ok
                async with sem:
                    async with s.post(url, data=body(path), headers=headers) as r:
                        answer = json.loads(await r.read())
                        ok += bool(answer.get("choices"))
            await asyncio.gather(*(one(p) for p in paths))
        print(ok, loop.time() - start)

    asyncio.run(main())
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_images(folder: Path, count: int) -> None:
    folder.mkdir()
    for i in range(count):
        img = Image.new("RGB", (64, 48), ((i * 7) % 256, (i * 13) % 256, (i // 256) % 256))
        img.putpixel((i % 64, 0), (255, 255, 255))
        img.save(folder / f"img_{i:06d}.png")


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("the fake endpoint did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        make_images(folder, args.images)
        port = free_port()
        url = f"http://127.0.0.1:{port}/chat/completions"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline",
                "fake-endpoint",
                "--port",
                str(port),
                "--latency",
                str(args.latency),
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            env = {**os.environ, "MEMORIES_API_KEY": "bench-key"}
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            client = Path(tmp) / "minimal_client.py"
            client.write_text(MINIMAL_CLIENT)
            commands = {
                "minimal": [sys.executable, str(client), url, str(folder), str(args.concurrency)],
                "pipeline": [
                    sys.executable,
                    "-m",
                    "pipeline",
                    "run",
                    str(folder),
                    "-o",
                    str(Path(tmp) / "out"),
                    "--endpoint",
                    url,
                    "--concurrency",
                    str(args.concurrency),
                    "--quiet",
                ],
            }
            # Each client once on a single image: its fixed cost (start-up, imports, ingest).
            single = Path(tmp) / "single"
            single.mkdir()
            shutil.copy(next(folder.iterdir()), single)
            fixed = {}
            for name, cmd in commands.items():
                one = [str(single) if c == str(folder) else c for c in cmd]
                runs = []
                for _ in range(4):  # the first run writes the bytecode cache: not counted
                    shutil.rmtree(Path(tmp) / "out", ignore_errors=True)
                    runs.append(measure(one, env=env).cpu_s)
                fixed[name] = min(runs[1:])  # the least noisy estimate of a fixed cost
            results: dict[str, list[Measured]] = {"minimal": [], "pipeline": []}
            phases: dict[str, list[float]] = {"minimal": [], "pipeline": []}
            # Alternate the two, so both see the same machine; compare medians.
            for _ in range(args.repeat):
                for name, cmd in commands.items():
                    shutil.rmtree(Path(tmp) / "out", ignore_errors=True)
                    m = measure(cmd, env=env)
                    if m.returncode != 0:
                        raise SystemExit(f"{name} failed with exit code {m.returncode}")
                    results[name].append(m)
                    phases[name].append(
                        float(m.stdout.split()[1])
                        if name == "minimal"
                        else request_phase(Path(tmp) / "out")
                    )
                    print(
                        f"{name:9s} wall_s={m.wall_s:6.2f} rate={args.images / m.wall_s:7.0f}/s "
                        f"cpu_s={m.cpu_s:6.2f} peak_rss_mb={m.peak_rss_mb:5.0f}"
                    )
        finally:
            server.terminate()
            server.wait()
    mini, pipe = results["minimal"], results["pipeline"]
    wall_m, wall_p = median(m.wall_s for m in mini), median(m.wall_s for m in pipe)
    cpu_m, cpu_p = median(m.cpu_s for m in mini), median(m.cpu_s for m in pipe)
    print(
        f"medians of {args.repeat}: minimal {args.images / wall_m:.0f}/s {cpu_m:.2f} cpu_s, "
        f"pipeline {args.images / wall_p:.0f}/s {cpu_p:.2f} cpu_s, "
        f"peak RSS {max(m.peak_rss_mb for m in mini):.0f} / {max(m.peak_rss_mb for m in pipe):.0f} MB"
    )
    print(f"rate ratio (pipeline / minimal) = {wall_m / wall_p:.2f}  (target >= 0.9)")
    print(f"cpu ratio  (pipeline / minimal) = {cpu_p / cpu_m:.2f}  (target <= 1.2)")
    per_m = (cpu_m - fixed["minimal"]) / (args.images - 1) * 1e6
    per_p = (cpu_p - fixed["pipeline"]) / (args.images - 1) * 1e6
    print(
        f"fixed cpu_s (one image, min of 3): minimal {fixed['minimal']:.2f}, pipeline "
        f"{fixed['pipeline']:.2f}; per-image cpu: minimal {per_m:.0f} us, pipeline "
        f"{per_p:.0f} us, ratio {per_p / per_m:.2f}"
    )
    phase_m, phase_p = median(phases["minimal"]), median(phases["pipeline"])
    print(
        f"request phase only (no start-up): minimal {args.images / phase_m:.0f}/s, "
        f"pipeline {args.images / phase_p:.0f}/s, ratio {phase_m / phase_p:.2f}"
    )


def request_phase(out: Path) -> float:
    """First request sent to last answer received, from the pipeline's own rows."""
    rows = ds.dataset(sorted(out.glob("part-*.parquet"))).to_table(
        columns=["finished_at", "latency_s"]
    )
    end = pc.max(rows["finished_at"]).as_py().timestamp()
    first = min(
        f.timestamp() - lat
        for f, lat in zip(
            rows["finished_at"].to_pylist(), rows["latency_s"].to_pylist(), strict=True
        )
    )
    return end - first


if __name__ == "__main__":
    main()
