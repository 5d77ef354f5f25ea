"""Small shards merged when a run ends (`output/merge.py`): a nightly folder keeps shards
at least half full and at most one smaller, a folder of nearly full shards is not
rewritten, and a merge killed half-way loses and repays nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.report.status import read_status
from tests.fakes import ScriptedServer, digest_of_file, json_error
from tests.helpers import distinct_images, results


def shard_sizes(out: Path) -> list[int]:
    return sorted(pq.ParquetFile(p).metadata.num_rows for p in out.glob("part-*.parquet"))


def test_nightly_runs_leave_shards_at_least_half_full_and_one_smaller(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    arriving = sorted(distinct_images(tmp_path / "all", 23).iterdir())
    tonight = tmp_path / "imgs"
    tonight.mkdir()
    out = tmp_path / "out"
    args = [str(tonight), "-o", str(out), "--endpoint", server.url, "--quiet"]
    for first in range(0, len(arriving), 3):  # three new images a night, eight nights
        for image in arriving[first : first + 3]:
            shutil.copy(image, tonight / image.name)
        result = CliRunner().invoke(cli, ["run", *args, "--rows-per-shard", "10"])
        assert result.exit_code == 0, result.output
        sizes = shard_sizes(out)
        assert sum(sizes) == min(first + 3, len(arriving))
        assert sum(1 for n in sizes if n < 5) <= 1, sizes  # one under half at most
    assert shard_sizes(out) == [5, 6, 6, 6]  # 8 nights, 8 shards written: 4 left
    assert server.count() == 23  # nothing sent twice
    assert len({r["id"] for r in results(out)}) == 23


def test_a_merge_killed_between_writing_and_removing_is_counted_once_then_tidied(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """What a kill -9 after the merged shard is written and before the small ones are
    removed leaves: every row twice, identical. Counted once, and the next run keeps one."""
    imgs = distinct_images(tmp_path / "imgs", 6)
    out = tmp_path / "out"
    args = [str(imgs), "-o", str(out), "--endpoint", server.url, "--quiet"]
    assert CliRunner().invoke(cli, ["run", *args, "--rows-per-shard", "4"]).exit_code == 0
    (small,) = [p for p in out.glob("part-*.parquet") if pq.read_metadata(p).num_rows == 2]
    shutil.copy(small, out / "part-00099.parquet")  # the merged copy, the original not yet gone
    assert len(results(out)) == 8  # the small shard's 2 rows twice
    status = read_status(out)
    assert (status.ok, status.pending) == (6, 0)
    once = {r["id"]: r["cost_usd"] for r in results(out)}
    assert status.cost_usd == pytest.approx(sum(once.values()))
    assert CliRunner().invoke(cli, ["run", *args, "--rows-per-shard", "4"]).exit_code == 0
    assert server.count() == 6  # nothing paid twice
    rows = results(out)
    assert len(rows) == len({r["id"] for r in rows}) == 6


def test_shards_compaction_left_nearly_full_are_not_rewritten(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    imgs = distinct_images(tmp_path / "imgs", 12)
    first = sorted(imgs.iterdir())[0]
    server.plan(digest_of_file(first), json_error(400, "rejected"))
    out = tmp_path / "out"
    args = ["run", str(imgs), "-o", str(out), "--endpoint", server.url, "--quiet"]
    assert CliRunner().invoke(cli, [*args, "--rows-per-shard", "4"]).exit_code == 1
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert shard_sizes(out) == [4, 4, 4]
    result = CliRunner().invoke(cli, [*args, "--rows-per-shard", "4", "--retry-errors"])
    assert result.exit_code == 0, result.output
    # The error row's shard lost it to the ledger (3 rows left, at least half of 4): it
    # is rewritten once by compaction, and the other two not at all.
    assert shard_sizes(out) == [1, 3, 4, 4]
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert sum(after.get(name) == t for name, t in before.items()) == 2
