"""What the test modules share besides fixtures (those are in conftest.py): paths,
the test key, running the CLI in process or as a process, reading results, and images
and answers to send. No test module imports another."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from click.testing import CliRunner, Result
from PIL import Image

from pipeline.cli import cli

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"
FIXTURES = REPO / "data" / "fixtures"
KEY = "sk-mavi-TESTSECRET-0123456789"

SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "enum": ["animal", "landscape", "object"]},
        "people": {"type": "integer"},
        "indoor": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["subject", "people", "indoor", "tags"],
    "additionalProperties": False,
}


def run(*args: str) -> Result:
    """`caption run ARGS --quiet` in this process."""
    return CliRunner().invoke(cli, ["run", *args, "--quiet"])


def spawn_run(*args: str) -> subprocess.Popen[str]:
    """`caption run ARGS --quiet` in a process of its own (to kill, race or cut off)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", *args, "--quiet"],
        env={**os.environ, "MEMORIES_API_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def results(out: Path) -> list[dict]:
    """Every row of an output folder's shards."""
    files = sorted(glob.glob(str(out / "part-*.parquet")))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["source"]).name: r for r in rows}


def distinct_images(root: Path, n: int) -> Path:
    """`n` small PNGs, each with bytes (and so a request) of its own."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16 + i, 16), (i, 2 * i, 3 * i)).save(root / f"img_{i:03d}.png")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def completion(content: str, finish: str = "stop") -> dict[str, Any]:
    """A chat completion answering `content`, with usage."""
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }
