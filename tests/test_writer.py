from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UsageError
from pipeline.records import RESULT_SCHEMA, Choice, Completion, ResultRow, Usage, result_schema
from pipeline.writer import ShardWriter, fold_journal, read_journal

EXTRAS = pa.schema([pa.field("label", pa.string()), pa.field("width", pa.int64())])


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
        extra={"label": f"l{i}", "width": i},
    )


def test_rows_become_complete_shards_with_extras(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, result_schema(EXTRAS), rows_per_shard=3)
    for i in range(7):
        writer.write(row(i, "error" if i == 4 else "ok"))
    writer.close()
    assert [p.name for p in sorted(tmp_path.iterdir())] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    tables = [pq.read_table(p) for p in sorted(tmp_path.iterdir())]
    assert [t.num_rows for t in tables] == [3, 3, 1]
    assert all(t.schema.equals(result_schema(EXTRAS)) for t in tables)
    rows = [r for t in tables for r in t.to_pylist()]
    assert [r["id"] for r in rows] == [f"id{i}" for i in range(7)]
    assert rows[2]["caption"] == "caption 2"
    assert rows[2]["choices"] == [
        {"index": 0, "content": "caption 2", "refusal": None, "finish_reason": "stop"}
    ]
    assert (rows[5]["label"], rows[5]["width"]) == ("l5", 5)
    assert (rows[4]["status"], rows[4]["caption"], rows[4]["error"]) == (
        "error",
        None,
        "HTTP 400: no",
    )
    assert rows[6]["finished_at"].timestamp() == 1_700_000_000.006


def test_each_row_is_in_the_journal_before_the_next_is_taken(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, RESULT_SCHEMA, rows_per_shard=100)
    writer.write(row(1))
    writer.write(row(2))
    # No close, as after a kill: both rows are on disk, no shard is visible yet.
    (journal,) = tmp_path.glob("*.journal.jsonl")
    assert [json.loads(line)["id"] for line in journal.read_text().splitlines()] == ["id1", "id2"]
    assert not list(tmp_path.glob("*.parquet"))
    assert read_journal(journal).num_rows == 2


def test_a_corrupt_line_inside_a_journal_is_an_error_naming_it(tmp_path: Path) -> None:
    journal = tmp_path / "part-00000.journal.jsonl"
    good = json.dumps(row(1).core_dict())
    journal.write_text(f"{good}\n{{not json\n{good}\n")
    with pytest.raises(UsageError, match=r"part-00000\.journal\.jsonl: corrupt journal"):
        fold_journal(journal)
    assert journal.exists()  # nothing was lost


def test_folding_when_the_shard_already_exists_keeps_the_shard(tmp_path: Path) -> None:
    """Killed after the rename, before the journal was deleted."""
    writer = ShardWriter(tmp_path, RESULT_SCHEMA, rows_per_shard=10)
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
    writer = ShardWriter(tmp_path, RESULT_SCHEMA, rows_per_shard=10)
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
    writer = ShardWriter(tmp_path, RESULT_SCHEMA, rows_per_shard=10)
    writer.write(odd)
    writer.write(row(2))
    writer.close()
    (shard,) = writer.shards
    rows = pq.read_table(shard).to_pylist()
    assert rows[0]["caption"] == "cut \ufffd here, 😀 kept, ünï"
    assert rows[0]["choices"][0]["content"] == rows[0]["caption"]
    assert rows[0]["error"] == "server said \ufffd"
    assert rows[1]["caption"] == "caption 2"
