"""Answers shaped to hurt, through whole runs against the scripted server: none of them
ends the run, each is kept once with what it cost, and none is bought twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config.labels import Labels
from pipeline.report.status import read_status
from tests.fakes import Reply, ScriptedServer, digest_of_file
from tests.helpers import KEY, SAMPLES, SCHEMA, completion


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", *args, "--quiet"])
    return result.exit_code, result.output


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    shutil.copytree(SAMPLES, tmp_path / "imgs")
    return tmp_path / "imgs"


def _schema_args(tmp_path: Path, imgs: Path, server: ScriptedServer, schema: Any = SCHEMA):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(schema))
    return [str(imgs), "-o", str(tmp_path / "out"), "--endpoint", server.url, "--schema", str(path)]


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    return {Path(r["source"]).name: r for r in pq.read_table(out).to_pylist()}


def test_a_deeply_nested_answer_is_one_error_row_and_the_run_goes_on(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    server.plan(digest_of_file(imgs / "sunset.jpg"), Reply(body=completion("[" * 100_000)))
    server.plan(digest_of_file(imgs / "icon.gif"), Reply(body=completion("[" * 500 + "]" * 500)))
    args = _schema_args(tmp_path, imgs, server)
    code, output = run_cli(*args)
    assert code == 1, output  # row errors, not a crash
    assert "Traceback" not in output
    rows = _rows(tmp_path / "out")
    assert len(rows) == 6
    for name in ("sunset.jpg", "icon.gif"):
        assert rows[name]["error_kind"] == "invalid_output"
        assert rows[name]["cost_usd"] > 0  # paid for, and the books say so
        assert rows[name]["caption"]  # its text is kept
    assert "nested" in rows["icon.gif"]["error"] or "not JSON" in rows["icon.gif"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 4
    code, _ = run_cli(*args)  # and the job can finish: a rerun sends nothing
    assert code == 1
    assert server.count() == 6


def test_any_exception_while_reading_an_answer_is_that_rows_error(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug of ours in reading one answer (here: the labels' check raising) costs that
    row, not the answers in flight."""
    real = Labels.parse

    def parse(self: Labels, text: str | None, finish: str | None, refusal: str | None) -> Any:
        if text and "poster" in text:
            raise KeyError("a bug in the parser")
        return real(self, text, finish, refusal)

    monkeypatch.setattr(Labels, "parse", parse)
    server.plan(digest_of_file(imgs / "poster.jpg"), Reply(body=completion('{"poster": 1}')))
    code, output = run_cli(*_schema_args(tmp_path, imgs, server))
    assert code == 1, output
    rows = _rows(tmp_path / "out")
    assert rows["poster.jpg"]["error_kind"] == "invalid_output"
    assert "KeyError" in rows["poster.jpg"]["error"]
    assert rows["poster.jpg"]["caption"] == '{"poster": 1}'
    assert rows["poster.jpg"]["cost_usd"] > 0
    assert sum(r["status"] == "ok" for r in rows.values()) == 5
    assert server.count() == 6


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "object", "properties": {"a": {"enum": 5}}}, "enum"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": 5}, "required"),
        ({"type": "object", "properties": {"a": {"enum": "abcdef"}}}, "enum"),
        ({"type": "objekt"}, "type"),
        ({"type": "object", "properties": {"a": {"$ref": "#"}}}, "recursion"),
    ],
)
def test_schemas_that_are_not_json_schema_are_refused_before_sending(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str, schema: Any, says: str
) -> None:
    code, output = run_cli(*_schema_args(tmp_path, imgs, server, schema))
    assert code == 2, output
    assert says in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    assert server.count() == 0


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return {"type": "object", "properties": {"deep": schema}, "required": ["deep"]}


@pytest.mark.parametrize("depth", [99, 3000])
def test_schemas_nested_past_what_parquet_stores_are_refused(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str, depth: int
) -> None:
    path = tmp_path / "deep.json"
    # Written by hand: json.dumps itself cannot write 3,000 levels.
    inner = '{"type": "string"}'
    for _ in range(depth):
        inner = '{"type": "array", "items": ' + inner + "}"
    path.write_text('{"type": "object", "properties": {"deep": ' + inner + "}}")
    args = [str(imgs), "-o", str(tmp_path / "out"), "--endpoint", server.url]
    code, output = run_cli(*args, "--schema", str(path))
    assert code == 2, output
    assert "Traceback" not in output
    assert "nested" in output or "not readable JSON" in output
    assert server.count() == 0


def test_the_deepest_schema_allowed_is_stored_and_read_back(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    from pipeline.config.labels import MAX_SCHEMA_DEPTH

    value: Any = "leaf"
    for _ in range(MAX_SCHEMA_DEPTH - 1):
        value = [value]
    server.default = Reply(body=completion(json.dumps({"deep": value})))
    code, output = run_cli(*_schema_args(tmp_path, imgs, server, _nested(MAX_SCHEMA_DEPTH - 1)))
    assert code == 0, output
    rows = pq.read_table(tmp_path / "out").to_pylist()  # Parquet reads it back
    assert len(rows) == 6
    assert all(r["status"] == "ok" for r in rows)


def test_an_error_row_quotes_the_failing_value_not_the_whole_enum(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    enum = [f"label-{i:06d}-" + "x" * 40 for i in range(20_000)]  # ~1 MB of enum
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": enum}},
        "required": ["label"],
    }
    server.default = Reply(body=completion('{"label": "none of them"}'))
    code, _ = run_cli(*_schema_args(tmp_path, imgs, server, schema))
    assert code == 1
    for row in _rows(tmp_path / "out").values():
        assert row["error_kind"] == "invalid_output"
        assert '"none of them"' in row["error"]
        assert len(row["error"]) < 300


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": 10, "total_tokens": 5},
        {"prompt_tokens": "120", "completion_tokens": "9", "total_tokens": "129"},
        {"prompt_tokens": 100, "completion_tokens": 1.5},
    ],
)
def test_usage_that_does_not_read_is_our_own_count_not_free(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str, usage: dict[str, Any]
) -> None:
    body = completion("a caption")
    body["usage"] = usage
    server.default = Reply(body=body)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(imgs), "-o", str(out), "--endpoint", server.url])
    assert result.exit_code == 0, result.output
    assert "none that reads, for 6 rows" in result.output
    rows = pq.read_table(out).to_pylist()
    assert {r["usage_source"] for r in rows} == {"estimated"}
    assert all(r["prompt_tokens"] > 0 and r["cost_usd"] > 0 for r in rows)
    assert read_status(out).cost_usd > 0


def test_a_key_echoed_in_an_answer_is_never_stored(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    answer = json.dumps({"subject": "object", "people": 0, "indoor": True, "tags": [KEY]})
    body = completion(answer)
    body["id"] = f"resp-{KEY}"
    body["model"] = KEY
    server.default = Reply(body=body)
    code, output = run_cli(*_schema_args(tmp_path, imgs, server))
    assert code == 0, output
    out = tmp_path / "out"
    for path in [*out.rglob("*")]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    row = pq.read_table(out).to_pylist()[0]
    assert row["parsed"]["tags"] == ["[redacted]"]
