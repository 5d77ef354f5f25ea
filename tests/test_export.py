"""The output folder as a dataset: one schema for ever, and one file when people want one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.records import RESULT_SCHEMA
from tests.fakes import ScriptedServer
from tests.helpers import SAMPLES, results, run

pytestmark = pytest.mark.usefixtures("fast_backoff")


def two_drifting_nights(tmp_path: Path, server: ScriptedServer) -> Path:
    """Night 1: image,label with integer labels. Night 2: the list grew, and gained split
    and score columns and a label of 2.5. One row per shard: each night's shards stay as
    written (full shards are never merged)."""
    out = tmp_path / "out"
    names = sorted(p.name for p in SAMPLES.iterdir() if p.is_file())
    night1 = tmp_path / "night1.csv"
    night1.write_text(
        "image,label\n" + "".join(f"{SAMPLES / n},{i}\n" for i, n in enumerate(names[:3]))
    )
    one = ("--rows-per-shard", "1")
    assert run(str(night1), "-o", str(out), "--endpoint", server.url, *one).exit_code == 0
    night2 = tmp_path / "night2.csv"
    night2.write_text(
        "image,label,split,score\n"
        + "".join(f"{SAMPLES / n},{i},train,0.{i}\n" for i, n in enumerate(names[:3]))
        + f"{SAMPLES / names[3]},2.5,test,0.9\n"
        + f"{SAMPLES / names[4]},4,test,0.8\n"
    )
    assert run(str(night2), "-o", str(out), "--endpoint", server.url, *one).exit_code == 0
    return out


def test_every_shard_has_the_one_schema_whatever_the_lists_do(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    out = two_drifting_nights(tmp_path, server)
    shards = sorted(out.glob("part-*.parquet"))
    assert len(shards) == 5  # 3 written the first night, 2 the second
    assert all(pq.read_schema(s).equals(RESULT_SCHEMA) for s in shards)
    assert ds.dataset(out).to_table().num_rows == 5
    frame = pd.read_parquet(out)
    assert len(frame) == 5
    assert list(frame.columns) == RESULT_SCHEMA.names
    glob = str(out / "*.parquet")
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall() == [(5,)]
    assert pl.read_parquet(glob).columns == RESULT_SCHEMA.names


def test_hugging_face_datasets_reads_the_folder_as_the_results(
    tmp_path: Path, server: ScriptedServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    from datasets import load_dataset

    out = two_drifting_nights(tmp_path, server)
    loaded = load_dataset("parquet", data_dir=str(out), split="train")
    assert loaded.num_rows == 5
    assert loaded.column_names == RESULT_SCHEMA.names


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_export_joins_the_sources_own_columns(
    tmp_path: Path, server: ScriptedServer, key: str, suffix: str
) -> None:
    out = two_drifting_nights(tmp_path, server)
    target = tmp_path / f"labels{suffix}"
    result = CliRunner().invoke(cli, ["export", str(out), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"exported 5 rows to {target}"
    if suffix == ".parquet":
        rows = pq.read_table(target).to_pylist()
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in target.read_text().splitlines()]
    else:
        with open(target, newline="") as f:
            rows = list(csv.DictReader(f))
    assert len(rows) == 5
    by_id = {r["id"]: r for r in rows}
    for done in results(out):
        row = by_id[done["id"]]
        assert row["caption"] == done["caption"]
    labels = sorted(float(r["label"]) for r in rows)
    assert labels == [0.0, 1.0, 2.0, 2.5, 4.0]  # night 2's types, for every row
    assert sorted(str(r["split"]) for r in rows) == ["test", "test", "train", "train", "train"]
    if suffix == ".csv":
        first = json.loads(rows[0]["choices"])  # nested columns become JSON text
        assert first[0]["content"] == rows[0]["caption"]


def test_export_refuses_an_unknown_format_and_a_non_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "-o", str(tmp_path / "x.xlsx")])
    assert result.exit_code == 2
    assert "must end in .parquet, .jsonl, .csv" in result.output
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "-o", str(tmp_path / "x.csv")])
    assert result.exit_code == 2
    assert "not a caption output folder" in result.output
    assert not (tmp_path / "x.csv").exists()


def test_shards_of_an_older_version_get_the_one_schema(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """Older shards carried the list's columns and lacked newer result columns."""
    names = sorted(p.name for p in SAMPLES.iterdir() if p.is_file())
    lst = tmp_path / "l.csv"
    lst.write_text("image,label\n" + "".join(f"{SAMPLES / n},l{i}\n" for i, n in enumerate(names)))
    out = tmp_path / "out"
    assert run(str(lst), "-o", str(out), "--endpoint", server.url).exit_code == 0
    shard = out / "part-00000.parquet"
    old = pq.read_table(shard).drop_columns(["usage_source"])
    labels = pa.array([f"l{names.index(Path(s).name)}" for s in old["source"].to_pylist()])
    pq.write_table(old.append_column("label", labels), shard)  # as an older version wrote it
    assert run(str(lst), "-o", str(out), "--endpoint", server.url).exit_code == 0
    assert pq.read_schema(shard).equals(RESULT_SCHEMA)
    assert server.count() == len(names)  # nothing sent again
    target = tmp_path / "x.parquet"
    assert CliRunner().invoke(cli, ["export", str(out), "-o", str(target)]).exit_code == 0
    rows = pq.read_table(target).to_pylist()
    assert sorted(r["label"] for r in rows) == [f"l{i}" for i in range(len(names))]


def test_csv_cells_that_a_spreadsheet_would_run_are_made_text(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """OWASP's CSV-injection advice: `=`, `+`, `-`, `@`, tab and CR lead a formula."""
    from tests.fakes import Reply
    from tests.helpers import completion

    server.default = Reply(body=completion('=HYPERLINK("http://x","click")'))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["run", str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--quiet"]
    )
    assert result.exit_code == 0, result.output
    target = tmp_path / "all.csv"
    result = CliRunner().invoke(cli, ["export", str(out), "-o", str(target)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(target.open()))
    assert {r["caption"] for r in rows} == {'\'=HYPERLINK("http://x","click")'}
    assert all(not r["cost_usd"].startswith("'") for r in rows)  # numbers stay numbers
    parquet = tmp_path / "all.parquet"
    CliRunner().invoke(cli, ["export", str(out), "-o", str(parquet)])
    assert set(pq.read_table(parquet)["caption"].to_pylist()) == {
        '=HYPERLINK("http://x","click")'
    }  # only the CSV is changed


def test_a_removed_rows_own_columns_are_null_and_the_others_stay_with_their_rows(
    tmp_path: Path, server: ScriptedServer, key: str, id_parts: str
) -> None:
    out = two_drifting_nights(tmp_path, server)
    names = sorted(p.name for p in SAMPLES.iterdir() if p.is_file())
    night3 = tmp_path / "night3.csv"  # two rows gone from the list: removed
    night3.write_text(
        "image,label,split,score\n"
        + f"{SAMPLES / names[4]},4,test,0.8\n"
        + "".join(f"{SAMPLES / n},{i},train,0.{i}\n" for i, n in enumerate(names[:3]) if i != 1)
    )
    assert run(str(night3), "-o", str(out), "--endpoint", server.url).exit_code == 0
    assert server.count() == 5
    kept, every = tmp_path / "kept.parquet", tmp_path / "every.parquet"
    assert CliRunner().invoke(cli, ["export", str(out), "-o", str(kept)]).exit_code == 0
    wide = ["export", str(out), "-o", str(every), "--include-removed"]
    assert CliRunner().invoke(cli, wide).exit_code == 0
    labels = {Path(r["source"]).name: r["label"] for r in pq.read_table(kept).to_pylist()}
    assert labels == {names[0]: 0.0, names[2]: 2.0, names[4]: 4.0}
    gone = {Path(r["source"]).name: r for r in pq.read_table(every).to_pylist()}
    assert len(gone) == 5
    for name in (names[1], names[3]):  # answered and paid for, but no longer listed
        assert (gone[name]["label"], gone[name]["split"]) == (None, None)
        assert gone[name]["status"] == "ok"
