"""The folder's books (`pipeline/output/books.py`): every paid attempt counted once, through
--retry-errors, a compaction cut short, and a shard copied in twice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config.prices import cost_usd, load_price_table
from pipeline.output import books
from pipeline.output.folder import OutputDir
from pipeline.report.status import read_status
from tests.fakes import Reply, ScriptedServer
from tests.helpers import SAMPLES, SCHEMA, completion

CUT_OFF = Reply(body=completion('{"subject": "anim', finish="length"))  # 100 + 20 tokens


def attempt_usd() -> float:
    return cost_usd(load_price_table()["gpt:gpt-4o"], 100, 20)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", *args, "--quiet"])
    return result.exit_code, result.output


@pytest.fixture
def job(tmp_path: Path, server: ScriptedServer, key: str) -> list[str]:
    schema = tmp_path / "labels.json"
    schema.write_text(__import__("json").dumps(SCHEMA))
    server.default = CUT_OFF
    return [str(SAMPLES), "-o", str(tmp_path / "out"), "--endpoint", server.url]


def test_every_paid_attempt_stays_in_the_books_through_retry_errors(
    tmp_path: Path, server: ScriptedServer, job: list[str]
) -> None:
    args = [*job, "--schema", str(tmp_path / "labels.json")]
    assert run(*args)[0] == 1
    assert run(*args, "--retry-errors")[0] == 1
    assert run(*args, "--retry-errors")[0] == 1
    assert server.count() == 18  # three attempts at each of 6 images, all billed
    out = tmp_path / "out"
    status = read_status(out)
    assert status.cost_usd == pytest.approx(18 * attempt_usd())
    assert status.prompt_tokens == 18 * 100
    assert (status.errors, status.superseded) == (6, 12)
    assert len(pq.read_table(out)) == 6  # the results: one current row per id
    history = pq.read_table(out / ".caption" / "superseded-00000.ledger")
    assert history.num_rows == 6  # the lineage: each id's replaced attempt, whole
    assert set(history["error_kind"].to_pylist()) == {"truncated"}
    assert "superseded   12" in "\n".join(status.lines())


def test_the_budget_cap_holds_across_any_number_of_retries(
    tmp_path: Path, server: ScriptedServer, job: list[str]
) -> None:
    # Room for 14.5 attempts beside one row's worst case (its 1000 tokens out): a row
    # that does not fit waits for those in flight, so one worst case is the slack.
    cap = 14.5 * attempt_usd() + cost_usd(load_price_table()["gpt:gpt-4o"], 0, 1000)
    args = [*job, "--schema", str(tmp_path / "labels.json"), "--max-cost", f"{cap:.8f}"]
    codes = [run(*args)[0]] + [run(*args, "--retry-errors")[0] for _ in range(4)]
    assert codes[-1] == 4  # the cap stopped it
    assert read_status(tmp_path / "out").cost_usd <= cap
    assert server.count() * attempt_usd() <= cap


def _two_attempts(tmp_path: Path, server: ScriptedServer, job: list[str]) -> Path:
    """A folder where the 6 error rows of a first run were answered again."""
    out = tmp_path / "out"
    assert run(*job, "--schema", str(tmp_path / "labels.json"))[0] == 1
    server.default = Reply()
    assert run(*job, "--schema", str(tmp_path / "labels.json"), "--retry-errors")[0] == 0
    return out


def test_a_compaction_cut_short_counts_each_attempt_once(
    tmp_path: Path,
    server: ScriptedServer,
    job: list[str],
    monkeypatch: pytest.MonkeyPatch,
    id_parts: str,
) -> None:
    def killed(*_: object) -> None:
        raise KeyboardInterrupt  # as if killed after the ledger was written

    out = tmp_path / "out"
    assert run(*job, "--schema", str(tmp_path / "labels.json"))[0] == 1
    server.default = Reply()
    with monkeypatch.context() as m:
        m.setattr(books, "write_parquet_atomic", _ledger_then(killed))
        result = CliRunner().invoke(
            cli, ["run", *job, "--schema", str(tmp_path / "labels.json"), "--retry-errors"]
        )
        assert result.exit_code != 0
    assert len(list((out / ".caption").glob("superseded-*.ledger"))) == 1
    assert len(pq.read_table(out)) == 12  # both attempts still in the shards
    assert not list((out / ".caption").glob("*.tmp"))  # the staged shards are gone too
    paid = server.count()
    status = read_status(out)
    assert status.cost_usd == pytest.approx(6 * attempt_usd() + _billed_ok(out))
    assert (status.ok, status.errors) == (6, 0)
    assert run(*job, "--schema", str(tmp_path / "labels.json"))[0] == 0  # compacts
    assert server.count() == paid  # nothing sent again
    assert len(pq.read_table(out)) == 6
    assert len(list((out / ".caption").glob("superseded-*.ledger"))) == 1  # not added twice
    assert read_status(out).cost_usd == pytest.approx(status.cost_usd)


def _ledger_then(fail):  # type: ignore[no-untyped-def]
    real = books.write_parquet_atomic

    def write(table, path, tmp=None):  # type: ignore[no-untyped-def]
        real(table, path, tmp)
        if path.name.endswith(".ledger"):
            fail()

    return write


def _billed_ok(out: Path) -> float:
    table = pq.read_table(out)
    return sum(
        c
        for c, s in zip(table["cost_usd"].to_pylist(), table["status"].to_pylist(), strict=True)
        if s == "ok"
    )


def test_a_shard_copied_in_twice_is_counted_once_and_never_ledgered(
    tmp_path: Path, server: ScriptedServer, job: list[str], id_parts: str
) -> None:
    out = _two_attempts(tmp_path, server, job)
    before = read_status(out)
    shard = sorted(out.glob("part-*.parquet"))[-1]
    shutil.copy(shard, out / "part-99999.parquet")  # a user's copy, or a sync tool's
    copied = read_status(out)
    assert (copied.ok, copied.errors, copied.done) == (before.ok, before.errors, before.done)
    assert copied.cost_usd == pytest.approx(before.cost_usd)
    books.compact(OutputDir(out))
    assert len(pq.read_table(out)) == 6
    assert read_status(out).superseded == before.superseded == 6
    assert read_status(out).cost_usd == pytest.approx(before.cost_usd)


def test_retries_of_a_users_own_ids_are_compacted_the_same(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    import json

    lines = [json.dumps({"path": str(p), "sku": f"SKU {i}"}) for i, p in enumerate(
        sorted(p for p in SAMPLES.rglob("*") if p.is_file())
    )]  # fmt: skip
    listing = tmp_path / "list.jsonl"
    listing.write_text("\n".join(lines) + "\n")
    server.default = CUT_OFF
    out = tmp_path / "out"
    args = [str(listing), "--id-column", "sku", "-o", str(out), "--endpoint", server.url]
    schema = tmp_path / "labels.json"
    schema.write_text(json.dumps(SCHEMA))
    assert run(*args, "--schema", str(schema))[0] == 1
    assert run(*args, "--schema", str(schema), "--retry-errors")[0] == 1
    status = read_status(out)
    assert (status.errors, status.superseded) == (6, 6)  # ids "SKU 0".. are not hex
    assert status.cost_usd == pytest.approx(12 * attempt_usd())
    assert sorted(pq.read_table(out)["id"].to_pylist()) == [f"SKU {i}" for i in range(6)]
