from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config.identity import fingerprint, job_definition
from pipeline.config.loading import load_config
from pipeline.output import books
from pipeline.output.folder import OutputDir
from pipeline.output.writer import ShardWriter
from pipeline.records import ResultRow
from tests.fakes import ScriptedServer
from tests.helpers import SAMPLES, results


def write_shard(out: Path, *rows: tuple[str, str, int]) -> None:
    writer = ShardWriter(out, rows_per_shard=100)
    for row_id, status, finished in rows:
        writer.write(
            ResultRow(
                id=row_id,
                source=f"/{row_id}",
                status=status,
                attempts=1,
                latency_s=0.1,
                finished_at_ms=finished,
                cost_usd=0.01 if status == "ok" else None,
            )
        )
    writer.close()


def ids_by_shard(out: Path) -> list[list[tuple[str, str]]]:
    return [
        list(zip(t["id"].to_pylist(), t["status"].to_pylist(), strict=True))
        for t in (pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))
    ]


def test_compact_keeps_the_newest_row_per_id(tmp_path: Path) -> None:
    write_shard(tmp_path, ("a", "error", 1), ("b", "ok", 1), ("c", "error", 1))
    write_shard(tmp_path, ("a", "ok", 5), ("c", "error", 6))
    write_shard(tmp_path, ("c", "ok", 6))  # same moment as the newer error: ok wins
    assert books.compact(OutputDir(tmp_path)) == 3
    assert ids_by_shard(tmp_path) == [[("b", "ok")], [("a", "ok")], [("c", "ok")]]
    assert books.compact(OutputDir(tmp_path)) == 0  # idempotent


def test_a_shard_left_empty_by_compaction_is_removed(tmp_path: Path) -> None:
    write_shard(tmp_path, ("a", "error", 1))
    write_shard(tmp_path, ("a", "ok", 2))
    books.compact(OutputDir(tmp_path))
    assert [p.name for p in sorted(tmp_path.glob("part-*.parquet"))] == ["part-00001.parquet"]


def test_scan_counts_and_spend(tmp_path: Path) -> None:
    write_shard(tmp_path, ("a", "ok", 1), ("b", "error", 1), ("c", "ok", 1))
    done = books.scan(OutputDir(tmp_path))
    assert sorted(done.id_array(ok_only=True).to_pylist()) == ["a", "c"]
    assert sorted(done.id_array().to_pylist()) == ["a", "b", "c"]
    assert (done.ok, done.errors) == (2, 1)
    assert done.cost_usd == 0.02


def test_fingerprint_covers_the_answer_not_the_pace() -> None:
    base = job_definition(load_config())
    assert "api_key" not in str(base).lower()
    same_pace = job_definition(load_config(None, {"concurrency": 3, "max_cost": 5.0, "rpm": 10}))
    assert fingerprint(same_pace) == fingerprint(base)
    for change in (
        {"model": "gpt:o3"},
        {"prompt": "x"},
        {"endpoint": "fake"},
        {"max_tokens": 5},
        {"temperature": 0.5},
        {"detail": "low"},
    ):
        assert fingerprint(job_definition(load_config(None, change))) != fingerprint(base), change


def test_reading_the_folder_gives_the_results_and_nothing_else(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """pd.read_parquet(OUT) failed on run.json; with it moved, the manifest's rows were
    mixed into the results. Everything but the shards is in the hidden `.caption/`."""
    out = tmp_path / "out"
    run = ["run", str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--quiet"]
    assert CliRunner().invoke(cli, [*run, "--rows-per-shard", "4"]).exit_code == 0
    # What a run in progress, or a killed one, also leaves: a journal and a temp file.
    (out / ".caption/part-00009.journal.jsonl").write_text('{"id": "x"}\n')
    (out / ".caption/part-00009.parquet.tmp").write_bytes(b"half a shard")
    ids = sorted(r["id"] for r in results(out))
    assert len(ids) == 6
    assert sorted(pd.read_parquet(out)["id"]) == ids  # the folder itself
    assert sorted(ds.dataset(out).to_table()["id"].to_pylist()) == ids
    glob = str(out / "*.parquet")  # duckdb and polars read every file of a folder, hidden
    assert (
        sorted(r[0] for r in duckdb.sql(f"select id from read_parquet('{glob}')").fetchall()) == ids
    )
    assert sorted(pl.read_parquet(glob)["id"].to_list()) == ids
    # `**` descends into hidden folders too: no file there may end in .parquet
    deep = str(out / "**" / "*.parquet")
    assert (
        sorted(r[0] for r in duckdb.sql(f"select id from read_parquet('{deep}')").fetchall()) == ids
    )
    assert sorted(pl.read_parquet(deep)["id"].to_list()) == ids
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]


def test_a_folder_of_the_older_layout_is_read_and_moved(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    out = tmp_path / "out"
    run = ["run", str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--quiet"]
    assert CliRunner().invoke(cli, run).exit_code == 0
    (out / ".caption/manifest.pq").rename(out / "manifest.parquet")
    (out / ".caption/run.json").rename(out / "run.json")
    status = CliRunner().invoke(cli, ["status", str(out)])
    assert status.exit_code == 0, status.output
    assert "done         6 (6 ok, 0 errors)" in status.output
    assert CliRunner().invoke(cli, run).exit_code == 0
    assert server.count() == 6  # resumed: nothing sent again
    assert (out / ".caption/manifest.pq").exists()
    assert (out / ".caption/run.json").exists()
    assert not (out / "manifest.parquet").exists()
    assert not (out / "run.json").exists()
    # A nightly command that names the folder's manifest by its old name still works.
    (out / ".caption/manifest.pq").rename(out / "manifest.parquet")
    (out / ".caption/run.json").rename(out / "run.json")
    legacy = ["run", str(out / "manifest.parquet"), "-o", str(out), "--endpoint", server.url]
    result = CliRunner().invoke(cli, [*legacy, "--quiet"])
    assert result.exit_code == 0, result.output
    assert server.count() == 6
    # The previous version kept it as .caption/manifest.parquet, which `**/*.parquet`
    # globs read as results: the next run renames it.
    (out / ".caption/manifest.pq").rename(out / ".caption/manifest.parquet")
    assert CliRunner().invoke(cli, ["status", str(out)]).exit_code == 0
    assert CliRunner().invoke(cli, run).exit_code == 0
    assert server.count() == 6
    assert sorted(p.name for p in (out / ".caption").glob("manifest*")) == ["manifest.pq"]


def test_a_hand_edited_run_json_is_one_error_naming_it(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    import json

    out = tmp_path / "out"
    args = ["run", str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--quiet"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    run_json = out / ".caption" / "run.json"
    meta = json.loads(run_json.read_text())
    for broken in ({**meta, "runs": "yesterday"}, {**meta, "job": []}, [1, 2]):
        run_json.write_text(json.dumps(broken))
        for command in (
            ["export", str(out), "-o", str(tmp_path / "x.csv")],
            ["report", str(out), "-o", str(tmp_path / "r.html")],
            ["status", str(out)],
        ):
            result = CliRunner().invoke(cli, command)
            assert result.exit_code == 2, (command, result.output)
            assert str(run_json) in result.output
            assert "Traceback" not in result.output
            assert len(result.output.strip().splitlines()) == 1
