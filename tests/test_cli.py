from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from pipeline import __version__
from pipeline.cli import cli
from tests.helpers import SAMPLES


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True)


def test_help_lists_commands_without_heavy_imports() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from pipeline.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output)\n"
        "print('HEAVY', sorted(m for m in ('pandas', 'pyarrow', 'aiohttp') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "HEAVY []" in out
    for command in ("ingest", "prices"):
        assert f"  {command} " in out


def test_run_and_status_on_a_folder_never_import_pandas(tmp_path: Path, key: str) -> None:
    # pyarrow imports pandas on its first conversion of Python objects; that is 0.45 s of
    # every small nightly run. Jobs over plain paths must not pay it.
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('PANDAS', 'pandas' in sys.modules, file=sys.stderr))\n"
        "sys.argv = ['caption', *sys.argv[1:]]\n"
        "runpy.run_module('pipeline', run_name='__main__')\n"
    )
    out = str(tmp_path / "out")
    for args in (
        ["run", str(SAMPLES), "-o", out, "--endpoint", "fake", "--quiet"],
        ["run", str(SAMPLES), "-o", out, "--endpoint", "fake", "--quiet"],  # the resume path
        ["status", out],
        ["estimate", str(SAMPLES)],
    ):
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert result.returncode in (0, 1), result.stderr
        assert "PANDAS False" in result.stderr, (args, result.stderr)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_prices_json() -> None:
    result = CliRunner().invoke(cli, ["prices", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert len(rows) == 33 + 9 + 14 + 4  # gpt, gemini, qwen, nova
    assert {
        "model": "gpt:gpt-4o",
        "input_per_1m": 2.5,
        "cached_input_per_1m": None,
        "output_per_1m": 10.0,
        "tiers": [],
        "image": {"rule": "tile", "base": 85, "per_tile": 170},
        "image_tokens_exact": True,
        "rule": "tile: 85 + 170 per 512-px tile",
    } in rows
    pro = next(r for r in rows if r["model"] == "gemini:gemini-2.5-pro")
    assert pro["tiers"] == [{"above": 200000, "input_per_1m": 2.5, "output_per_1m": 15.0}]
    assert pro["image_tokens_exact"] is False


def test_prices_table_includes_job_overrides(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        "[prices.'gpt:gpt-6']\ninput_per_1m = 3\noutput_per_1m = 12\ncached_input_per_1m = 1.5\n"
    )
    result = CliRunner().invoke(cli, ["prices", "--config", str(job)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "gpt: prices from https://api-tools.memories.ai/api-reference/gpt/gpt-ilm"
    assert "cached $/1M" in lines[1]
    assert any(
        line.split() == ["gpt:gpt-6", "3", "1.5", "12", "none", "(images", "not", "counted)"]
        for line in lines
    )
    assert any("gpt:gpt-4o " in line and "tile: 85 + 170 per 512-px tile" in line for line in lines)
    families = [line.split(":")[0] for line in lines if " prices from https://" in line]
    assert families == ["gpt", "gemini", "qwen", "nova"]
    pro = lines.index(next(line for line in lines if "gemini:gemini-2.5-pro " in line))
    assert "(approximate)" in lines[pro]
    assert lines[pro + 1].split() == [
        "2.5",
        "15",
        "when",
        "the",
        "prompt",
        "is",
        "over",
        "200,000",
        "tokens",
    ]


def test_ingest_samples(tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    result = run("ingest", str(SAMPLES), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == f"ingested 6 rows from 1 source(s); 0 duplicate(s) dropped -> {out}"
    )
    assert pq.read_table(out).num_rows == 6


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    result = run("ingest", str(tmp_path / "nope"), "-o", str(tmp_path / "m.parquet"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("caption: error: source ")
    job = tmp_path / "job.toml"
    job.write_text("[limits]\nconcurrency = -1\n")
    result = run("prices", "--config", str(job))
    assert result.returncode == 2
    assert "[limits] concurrency = -1" in result.stderr


def test_numpy_starts_no_blas_threads() -> None:
    # OpenBLAS starts a spinning thread per core when numpy is imported; nothing here uses
    # it. Its threads carry the process's name (pyarrow's allocator thread has its own).
    code = (
        "import os\n"
        "os.environ.pop('OPENBLAS_NUM_THREADS', None)\n"
        "import pipeline.jobs.run\n"
        "names = [open(f'/proc/self/task/{t}/comm').read() for t in os.listdir('/proc/self/task')]\n"
        "print('SAME-NAMED THREADS', names.count(open('/proc/self/comm').read()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "SAME-NAMED THREADS 1" in out.stdout, out.stdout + out.stderr


def test_estimate_help_shows_only_what_an_estimate_uses() -> None:
    text = CliRunner().invoke(cli, ["estimate", "--help"]).output
    for flag in ("--rpm", "--tpm", "--max-attempts", "--max-cost", "--rows-per-shard"):
        assert flag not in text
    assert "--endpoint TEXT" in text
    assert "(--pilot only)" in text
    run_text = CliRunner().invoke(cli, ["run", "--help"]).output
    for flag in ("--rpm", "--tpm", "--max-attempts", "--max-cost", "--rows-per-shard"):
        assert flag in run_text
    assert "--pilot" not in run_text


def test_verbose_is_taken_after_the_command_too(tmp_path: Path) -> None:
    from pipeline.cli.group import verbose_first

    assert verbose_first(["run", "src", "-vv", "-o", "out", "--", "-v"]) == [
        "-vv", "run", "src", "-o", "out", "--", "-v",
    ]  # fmt: skip
    out = tmp_path / "out"
    result = run("run", str(SAMPLES), "-o", str(out), "--endpoint", "fake", "-v")
    assert result.returncode == 0, result.stderr
    assert "INFO pipeline" in result.stderr
