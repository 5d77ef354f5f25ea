"""The Python API: run, arun, estimate and read_results, from a script and from inside a
running event loop (as in Jupyter)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pandas as pd
import pytest

import pipeline
from pipeline.errors import FatalApiError, UsageError
from tests.fakes import Reply, ScriptedServer, digest_of_file
from tests.helpers import SAMPLES


def test_run_from_a_script_then_read_the_results(
    tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEMORIES_API_KEY", raising=False)
    handler = signal.getsignal(signal.SIGINT)
    result = pipeline.run(
        SAMPLES, tmp_path / "out", endpoint=server.url, api_key="sk-from-the-call", concurrency=2
    )
    assert (result.exit_code, result.ok, result.errors, result.sent) == (0, 6, 0, 6)
    assert result.cost_usd > 0
    assert server.seen[0].headers["Authorization"] == "sk-from-the-call"
    assert signal.getsignal(signal.SIGINT) is handler  # a library installs no handlers
    frame = result.results()
    assert isinstance(frame, pd.DataFrame)
    assert len(frame) == 6
    assert set(frame["status"]) == {"ok"}
    again = pipeline.run(SAMPLES, tmp_path / "out", endpoint=server.url, api_key="k")
    assert again.sent == 0  # resumed: nothing sent twice
    assert server.count() == 6


def test_run_inside_a_running_loop_and_arun(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    async def notebook_cell() -> tuple[pipeline.RunResult, pipeline.RunResult]:
        first = pipeline.run(SAMPLES / "sunset.jpg", tmp_path / "a", endpoint=server.url)
        second = await pipeline.arun(SAMPLES, tmp_path / "b", endpoint=server.url)
        return first, second

    first, second = asyncio.run(notebook_cell())
    assert (first.ok, second.ok) == (1, 6)


def test_read_results_joins_the_lists_columns_and_spreads_parsed_fields(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    names = ["sunset.jpg", "icon.gif"]
    (tmp_path / "list.csv").write_text(
        "image,split\n"
        + "".join(f"{SAMPLES / n},{'train' if i else 'test'}\n" for i, n in enumerate(names))
    )
    schema = {
        "type": "object",
        "properties": {"animal": {"type": "boolean"}, "kind": {"enum": ["a", "b"]}},
        "required": ["animal", "kind"],
    }
    result = pipeline.run(
        tmp_path / "list.csv", tmp_path / "out", endpoint=server.url,
        json_schema={"name": "labels", "schema": schema},
    )  # fmt: skip
    assert result.ok == 2
    frame = pipeline.read_results(tmp_path / "out")
    assert sorted(frame["split"]) == ["test", "train"]
    assert {"parsed.animal", "parsed.kind"} <= set(frame.columns)
    assert set(frame["parsed.kind"]) <= {"a", "b"}
    assert frame["parsed.animal"].dtype == "boolean"


def test_read_results_keeps_integers_and_booleans_with_error_rows(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """An error row has no tokens and no labels: the columns stay integer and boolean
    (pandas' nullable dtypes, with <NA>), not float64 and object."""
    server.plan(
        digest_of_file(SAMPLES / "icon.gif"),
        Reply(status=400, body={"error": {"message": "too small", "type": "x"}}),
    )
    schema = {"type": "object", "properties": {"animal": {"type": "boolean"}}}
    result = pipeline.run(SAMPLES, tmp_path / "out", endpoint=server.url, json_schema=schema)
    assert (result.ok, result.errors) == (5, 1)
    frame = pipeline.read_results(tmp_path / "out")
    assert frame["prompt_tokens"].dtype == "Int64"
    assert frame["created"].dtype == "Int64"
    assert frame["parsed.animal"].dtype == "boolean"
    error = frame[frame["status"] == "error"].iloc[0]
    assert pd.isna(error["prompt_tokens"])
    assert pd.isna(error["parsed.animal"])


def test_estimate_is_a_frame_with_a_row_per_model() -> None:
    frame = pipeline.estimate(SAMPLES, models=["gpt-4o", "gpt-4.1-mini"], max_tokens=100)
    assert list(frame["model"]) == ["gpt:gpt-4o", "gpt:gpt-4.1-mini"]
    assert (frame["images"] == 6).all()
    assert (frame["cost_max_usd"] >= frame["cost_expected_usd"]).all()


def test_errors_are_typed_never_system_exit(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    with pytest.raises(
        UsageError, match="setting concurency: unknown key; did you mean 'concurrency'"
    ):
        pipeline.run(SAMPLES, tmp_path / "out", endpoint=server.url, concurency=3)
    with pytest.raises(UsageError, match="no such file or folder"):
        pipeline.run(tmp_path / "nothing", tmp_path / "out", endpoint=server.url)
    server.default = Reply(status=401, body={"error": {"message": "bad key", "type": "auth"}})
    with pytest.raises(FatalApiError, match="bad key"):
        pipeline.run(SAMPLES, tmp_path / "out2", endpoint=server.url)
    with pytest.raises(UsageError, match="not a caption output folder"):
        pipeline.read_results(tmp_path / "nothing")


def test_the_budget_stop_is_an_outcome(tmp_path: Path, server: ScriptedServer, key: str) -> None:
    result = pipeline.run(SAMPLES, tmp_path / "out", endpoint=server.url, max_cost=0.002)
    assert (result.stopped, result.exit_code) == ("budget", 4)
    assert "budget cap" in (result.message or "")
    assert (
        json.loads((tmp_path / "out/.caption/run.json").read_text())["runs"][0]["stopped"]
        == "budget"
    )


def test_a_bare_json_schema_dict_works_as_a_schema_file_does(tmp_path: Path) -> None:
    """`json_schema=` takes a bare JSON Schema, as `--schema file.json` does (the README
    shows the dict form)."""
    schema = {
        "type": "object",
        "properties": {"subject": {"type": "string"}},
        "required": ["subject"],
        "additionalProperties": False,
    }
    out = tmp_path / "out"
    result = pipeline.run(SAMPLES, output=out, endpoint="fake", json_schema=schema)
    assert result.exit_code == 0, result.summary
    frame = pipeline.read_results(out)
    assert len(frame) == 6
    assert frame["parsed.subject"].notna().all()
    run_json = json.loads((out / ".caption" / "run.json").read_text())
    assert run_json["job"]["json_schema"]["schema"] == schema
