"""Structured labels end to end: --schema, the typed `parsed` column, error rows for
answers that do not fit or were cut off, and what reads and exports them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.report.status import read_status
from tests.fakes import Reply, ScriptedServer, digest_of_file
from tests.helpers import SAMPLES, SCHEMA, completion


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", *args, "--quiet"])
    return result.exit_code, result.output


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(SCHEMA))
    return path


def test_labels_land_as_typed_columns_that_every_reader_sees(
    tmp_path: Path, server: ScriptedServer, key: str, schema_file: Path
) -> None:
    out = tmp_path / "out"
    code, output = run_cli(
        str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--schema", str(schema_file)
    )
    assert code == 0, output
    sent = server.seen[0].body["response_format"]
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "labels", "strict": True, "schema": SCHEMA},
    }
    parsed_type = pa.struct(
        [
            pa.field("subject", pa.string()),
            pa.field("people", pa.int64()),
            pa.field("indoor", pa.bool_()),
            pa.field("tags", pa.list_(pa.string())),
        ]
    )
    assert ds.dataset(out).schema.field("parsed").type == parsed_type
    frame = pd.read_parquet(out)
    assert len(frame) == 6
    for value in frame["parsed"]:
        assert value["subject"] in {"animal", "landscape", "object"}
        assert isinstance(value["people"], int)
    # The fake answered what the schema asks; the caption column keeps the raw text.
    first = frame.iloc[0]
    assert json.loads(first["caption"])["subject"] == first["parsed"]["subject"]


def test_answers_that_do_not_fit_are_paid_error_rows_not_retried_on_their_own(
    tmp_path: Path, server: ScriptedServer, key: str, schema_file: Path
) -> None:
    shutil.copytree(SAMPLES, tmp_path / "imgs")
    bad = {
        "sunset.jpg": Reply(body=completion("Sure! It is a sunset.")),
        "icon.gif": Reply(
            body=completion('{"subject": "city", "people": 1, "indoor": true, "tags": []}')
        ),
        "forest.webp": Reply(body=completion('{"subject": "lands', finish="length")),
    }
    for name, reply in bad.items():
        server.plan(digest_of_file(tmp_path / "imgs" / name), reply)
    out = tmp_path / "out"
    args = [str(tmp_path / "imgs"), "-o", str(out), "--endpoint", server.url]
    args += ["--schema", str(schema_file)]
    code, _ = run_cli(*args)
    assert code == 1
    assert server.count() == 6  # each answered once: paid for, not sent again
    rows = {Path(r["source"]).name: r for r in pq.read_table(out).to_pylist()}
    assert rows["sunset.jpg"]["error_kind"] == "invalid_output"
    assert "not JSON" in rows["sunset.jpg"]["error"]
    assert rows["sunset.jpg"]["caption"] == "Sure! It is a sunset."
    assert rows["icon.gif"]["error_kind"] == "invalid_output"
    assert '$.subject is "city"' in rows["icon.gif"]["error"]
    assert rows["forest.webp"]["error_kind"] == "truncated"
    for name in bad:
        assert rows[name]["status"] == "error"
        assert rows[name]["parsed"] is None
        assert rows[name]["cost_usd"] > 0  # what it cost is kept
    assert read_status(out).errors_by_kind == {"invalid_output": 2, "truncated": 1}

    code, _ = run_cli(*args)  # a plain rerun sends nothing
    assert server.count() == 6
    code, _ = run_cli(*args, "--retry-errors")
    assert code == 0
    assert server.count() == 9
    assert all(r["status"] == "ok" for r in pq.read_table(out).to_pylist())


def test_the_fake_honours_max_tokens_with_a_truncated_row(
    tmp_path: Path, server: ScriptedServer, key: str, schema_file: Path
) -> None:
    out = tmp_path / "out"
    code, _ = run_cli(
        str(SAMPLES / "sunset.jpg"), "-o", str(out), "--endpoint", server.url,
        "--schema", str(schema_file), "--max-tokens", "5",
    )  # fmt: skip
    assert code == 1
    (row,) = pq.read_table(out).to_pylist()
    assert (row["finish_reason"], row["error_kind"], row["completion_tokens"]) == (
        "length",
        "truncated",
        5,
    )


def test_json_object_keeps_the_text_once_it_parses(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    toml = tmp_path / "job.toml"
    toml.write_text('[request]\nresponse_format = "json_object"\n')
    out = tmp_path / "out"
    code, _ = run_cli(str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--config", str(toml))
    assert code == 0
    table = pq.read_table(out)
    assert table.schema.field("parsed").type == pa.string()
    assert all("caption" in json.loads(v) for v in table["parsed"].to_pylist())


def test_a_text_job_has_no_parsed_column(tmp_path: Path, server: ScriptedServer, key: str) -> None:
    out = tmp_path / "out"
    assert run_cli(str(SAMPLES), "-o", str(out), "--endpoint", server.url)[0] == 0
    assert "parsed" not in pq.read_table(out).column_names


def test_csv_export_flattens_parsed(
    tmp_path: Path, server: ScriptedServer, key: str, schema_file: Path
) -> None:
    out = tmp_path / "out"
    run_cli(str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--schema", str(schema_file))
    result = CliRunner().invoke(cli, ["export", str(out), "-o", str(tmp_path / "x.csv")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "x.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert {"parsed.subject", "parsed.people", "parsed.indoor", "parsed.tags"} <= set(rows[0])
    assert "parsed" not in rows[0]
    assert rows[0]["parsed.subject"] in {"animal", "landscape", "object"}
    assert isinstance(json.loads(rows[0]["parsed.tags"]), list)


def test_the_estimate_counts_the_schema_and_matches_what_was_billed(
    tmp_path: Path, server: ScriptedServer, key: str, schema_file: Path
) -> None:
    def prompt_tokens(*extra: str) -> int:
        result = CliRunner().invoke(cli, ["estimate", str(SAMPLES), "--json", *extra])
        return json.loads(result.output)["models"][0]["input_tokens"]

    plain, structured = prompt_tokens(), prompt_tokens("--schema", str(schema_file))
    assert structured - plain > 6 * 40  # the schema's tokens, on every request
    out = tmp_path / "out"
    run_cli(str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--schema", str(schema_file))
    assert read_status(out).prompt_tokens == structured


def test_a_folder_whose_bare_schema_was_sent_strict_reruns_as_the_same_job(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """Older versions sent every bare schema with strict: true; one that strict mode
    refuses now goes without it. A folder recorded the old way is still the same job."""
    from pipeline.config.identity import fingerprint

    loose = {"type": "object", "properties": {"subject": {"type": "string"}}}  # optional
    (tmp_path / "loose.json").write_text(json.dumps(loose))
    out = tmp_path / "out"
    args = [str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--schema"]
    assert run_cli(*args, str(tmp_path / "loose.json"))[0] == 0
    run_json = out / ".caption" / "run.json"
    meta = json.loads(run_json.read_text())
    assert meta["job"]["json_schema"]["strict"] is False
    meta["job"]["json_schema"]["strict"] = True  # as an older version recorded it
    meta["fingerprint"] = fingerprint(meta["job"])
    run_json.write_text(json.dumps(meta))
    sent = server.count()
    code, output = run_cli(*args, str(tmp_path / "loose.json"))
    assert code == 0, output
    assert server.count() == sent  # nothing sent again


def _sse(*events: dict) -> bytes:
    lines = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    return b"".join(lines) + b"data: [DONE]\n\n"


USAGE = {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}
NO_TEXT = {
    # a refusal: content null, the refusal's text in its own field
    "refusal": (
        {"content": None, "refusal": "I can't help with that."},
        [{"refusal": "I can't "}, {"refusal": "help with that."}],
    ),
    # a tool call: content null, no refusal
    "tool call": (
        {"content": None, "tool_calls": [{"id": "t", "type": "function"}]},
        [{"tool_calls": [{"index": 0, "id": "t", "type": "function"}]}],
    ),
}


@pytest.mark.parametrize("kind", list(NO_TEXT))
@pytest.mark.parametrize("structured", [False, True])
def test_an_answer_without_text_is_the_same_row_streamed_or_not(
    tmp_path: Path, server: ScriptedServer, key: str, schema_file: Path, kind: str, structured: bool
) -> None:
    """caption is null either way (it was "" when streamed); a refusal's text is kept in
    `refusal`, and a structured job calls it `refused`, not "the answer is not JSON"."""
    message, deltas = NO_TEXT[kind]
    answer = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
        ],
        "usage": USAGE,
    }
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    stream = _sse(
        *({**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas),
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": USAGE},
    )
    src = SAMPLES / "sunset.jpg"
    rows = []
    for streamed in (False, True):
        out = tmp_path / f"out-{streamed}"
        reply = (
            Reply(raw=stream, content_type="text/event-stream") if streamed else Reply(body=answer)
        )
        server.plan(digest_of_file(src), reply)
        job = tmp_path / "job.toml"
        job.write_text(f"[request]\nstream = {'true' if streamed else 'false'}\n")
        args = [str(src), "-o", str(out), "--endpoint", server.url, "--config", str(job)]
        code, output = run_cli(*args, *(["--schema", str(schema_file)] if structured else []))
        assert code == (1 if structured else 0), output
        (row,) = pq.read_table(out).to_pylist()
        rows.append(row)
    keys = ("status", "caption", "refusal", "error_kind", "error", "cost_usd")
    assert {k: rows[0][k] for k in keys} == {k: rows[1][k] for k in keys}
    row = rows[0]
    assert row["caption"] is None
    assert row["refusal"] == ("I can't help with that." if kind == "refusal" else None)
    if structured:
        assert row["error_kind"] == ("refused" if kind == "refusal" else "invalid_output")
        assert "not JSON" not in row["error"]
        assert row["cost_usd"] > 0
