from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config.labels import result_schema
from pipeline.errors import StorageError
from pipeline.output import writer as writer_module
from pipeline.output.journal import read_journal
from pipeline.output.writer import ShardWriter, fold_journal
from pipeline.records import RESULT_SCHEMA, Choice, Completion, ResultRow, Usage


def row(i: int, status: str = "ok") -> ResultRow:
    completion = Completion(
        choices=(Choice(index=0, content=f"caption {i}", refusal=None, finish_reason="stop"),),
        usage=Usage(prompt_tokens=100 + i, completion_tokens=10, total_tokens=110 + i),
        response_id=f"r{i}",
        model="gpt-4o",
    )
    return ResultRow(
        id=f"id{i}",
        source=f"/img/{i}.png",
        status=status,
        attempts=1,
        latency_s=0.25,
        finished_at_ms=1_700_000_000_000 + i,
        http_status=200,
        completion=completion if status == "ok" else None,
        cost_usd=0.001 * i,
        error=None if status == "ok" else "HTTP 400: no",
    )


def test_rows_become_complete_shards_of_the_one_schema(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, rows_per_shard=3)
    for i in range(7):
        writer.write(row(i, "error" if i == 4 else "ok"))
    writer.close()
    assert [p.name for p in sorted(tmp_path.glob("*.parquet"))] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert not list((tmp_path / ".caption").iterdir())  # no journal, no temp file left
    tables = [pq.read_table(p) for p in sorted(tmp_path.glob("*.parquet"))]
    assert [t.num_rows for t in tables] == [3, 3, 1]
    assert all(t.schema.equals(RESULT_SCHEMA) for t in tables)  # the row's extras: not here
    rows = [r for t in tables for r in t.to_pylist()]
    assert [r["id"] for r in rows] == [f"id{i}" for i in range(7)]
    assert rows[2]["caption"] == "caption 2"
    assert rows[2]["choices"] == [
        {"index": 0, "content": "caption 2", "refusal": None, "finish_reason": "stop"}
    ]
    assert (rows[4]["status"], rows[4]["caption"], rows[4]["error"]) == (
        "error",
        None,
        "HTTP 400: no",
    )
    assert rows[6]["finished_at"].timestamp() == 1_700_000_000.006


def test_each_row_is_in_the_journal_before_the_next_is_taken(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, rows_per_shard=100)
    writer.write(row(1))
    writer.write(row(2))
    # No close, as after a kill: both rows are on disk, no shard is visible yet.
    (journal,) = tmp_path.glob(".caption/*.journal.jsonl")
    assert [json.loads(line)["id"] for line in journal.read_text().splitlines()] == ["id1", "id2"]
    assert not list(tmp_path.glob("*.parquet"))
    assert read_journal(journal).num_rows == 2


def line(i: int) -> bytes:
    return json.dumps(row(i).core_dict()).encode() + b"\n"


def test_a_corrupt_line_is_skipped_by_offset_and_the_others_fold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "part-00000.journal.jsonl"
    journal.write_bytes(line(1) + b"{not json\n" + line(2))
    shard = fold_journal(journal)
    assert shard is not None
    assert pq.read_table(shard)["id"].to_pylist() == ["id1", "id2"]
    assert f"byte {len(line(1))}: skipping 9 bytes" in caplog.text
    assert "sent again" in caplog.text


def test_a_torn_line_glued_to_the_next_loses_only_the_torn_row(tmp_path: Path) -> None:
    """What a full disk left under the old writer: half a line, then the next line."""
    journal = tmp_path / "part-00000.journal.jsonl"
    torn = line(2)[:57]
    journal.write_bytes(line(1) + torn + line(3) + line(4))
    table = read_journal(journal)
    assert table["id"].to_pylist() == ["id1", "id3", "id4"]
    assert table["caption"].to_pylist() == ["caption 1", "caption 3", "caption 4"]


def test_a_line_larger_than_arrows_block_folds(tmp_path: Path) -> None:
    """A 1.1 MB caption (stored twice in the line) once made the whole journal unreadable."""
    big = row(2)
    choice = Choice(index=0, content="x" * 1_100_000, refusal=None, finish_reason="stop")
    big.completion = Completion(choices=(choice,), usage=big.completion.usage)  # type: ignore[union-attr]
    writer = ShardWriter(tmp_path, rows_per_shard=100)
    for r in (row(1), big, row(3)):
        writer.write(r)
    (journal,) = tmp_path.glob(".caption/*.journal.jsonl")
    assert journal.stat().st_size > 2_200_000
    assert read_journal(journal)["id"].to_pylist() == ["id1", "id2", "id3"]
    writer.close()
    (shard,) = writer.shards
    captions = pq.read_table(shard)["caption"].to_pylist()
    assert [len(c) for c in captions] == [9, 1_100_000, 9]


class DiskFull:
    """`os.write` as on a disk that fills: the first call of a line writes part of it,
    then the next raises ENOSPC, until `space` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.space = True
        self.real = os.write
        monkeypatch.setattr(writer_module.os, "write", self.write)

    def write(self, fd: int, data: bytes) -> int:
        if self.space:
            return self.real(fd, data)
        if len(data) > 20:
            return self.real(fd, bytes(data[:20]))  # a short write, as the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_never_leaves_a_torn_line_and_keeps_the_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = DiskFull(monkeypatch)
    writer = ShardWriter(tmp_path, rows_per_shard=100)
    writer.write(row(1))
    disk.space = False
    with pytest.raises(StorageError, match="no space left on device"):
        writer.write(row(2))
    (journal,) = tmp_path.glob(".caption/*.journal.jsonl")
    # Cut back to the last whole line: no half of row 2 is left to glue onto row 3.
    data = journal.read_bytes()
    assert data.endswith(b"\n")
    assert [json.loads(x)["id"] for x in data.splitlines()] == ["id1"]
    assert [r.id for r in writer.unsaved] == ["id2"]
    with pytest.raises(StorageError):
        writer.write(row(3))  # still full: kept, in order
    disk.space = True
    writer.write(row(4))
    writer.close()
    (shard,) = writer.shards
    assert pq.read_table(shard)["id"].to_pylist() == ["id1", "id2", "id3", "id4"]
    assert writer.unsaved == []


def test_folding_when_the_shard_already_exists_keeps_the_shard(tmp_path: Path) -> None:
    """Killed after the rename, before the journal was deleted."""
    writer = ShardWriter(tmp_path, rows_per_shard=10)
    writer.write(row(1))
    writer.close()
    shard = tmp_path / "part-00000.parquet"
    journal = tmp_path / "part-00000.journal.jsonl"
    journal.write_text(json.dumps(row(9).core_dict()) + "\n")
    assert fold_journal(journal) == shard
    assert not journal.exists()
    assert pq.read_table(shard)["id"].to_pylist() == ["id1"]


def test_new_writers_number_after_what_the_folder_holds(tmp_path: Path) -> None:
    (tmp_path / "part-00007.parquet").write_bytes(b"")
    writer = ShardWriter(tmp_path, rows_per_shard=10)
    writer.write(row(1))
    writer.close()
    assert (tmp_path / "part-00008.parquet").exists()


def test_lone_surrogates_in_an_answer_cannot_break_the_journal(tmp_path: Path) -> None:
    # json.loads turns an answer's "\ud83d" (half an emoji) into a lone surrogate; Arrow
    # would refuse the whole journal at the fold, and again on every later run.
    odd = row(1)
    choice = Choice(
        index=0, content="cut \ud83d here, 😀 kept, ünï", refusal=None, finish_reason="length"
    )
    odd.completion = Completion(choices=(choice,), usage=odd.completion.usage)  # type: ignore[union-attr]
    odd.error = "server said \udce9"
    writer = ShardWriter(tmp_path, rows_per_shard=10)
    writer.write(odd)
    writer.write(row(2))
    writer.close()
    (shard,) = writer.shards
    rows = pq.read_table(shard).to_pylist()
    assert rows[0]["caption"] == "cut \ufffd here, 😀 kept, ünï"
    assert rows[0]["choices"][0]["content"] == rows[0]["caption"]
    assert rows[0]["error"] == "server said \ufffd"
    assert rows[1]["caption"] == "caption 2"


def test_a_structured_job_journals_and_folds_its_typed_parsed_column(tmp_path: Path) -> None:
    schema = result_schema(
        {
            "response_format": "json_schema",
            "json_schema": {
                "name": "t",
                "schema": {
                    "type": "object",
                    "properties": {
                        "cat": {"type": "boolean"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["cat", "tags"],
                },
            },
        }
    )
    writer = ShardWriter(tmp_path, rows_per_shard=10, schema=schema)
    good = row(0)
    good.parsed = {"cat": True, "tags": ["a", "b"]}
    writer.write(good)
    writer.write(row(1, "error"))  # no parsed value at all
    journal = next((tmp_path / ".caption").glob("*.journal.jsonl"))
    # What a kill -9 leaves: the journal alone, read back whole.
    assert read_journal(journal, schema)["parsed"].to_pylist() == [good.parsed, None]
    writer.close()
    table = pq.read_table(next(tmp_path.glob("*.parquet")))
    assert table.schema.equals(schema)
    assert table["parsed"].to_pylist() == [{"cat": True, "tags": ["a", "b"]}, None]
