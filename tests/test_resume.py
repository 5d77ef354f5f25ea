"""Resume and money safety: kills, signals, retry-errors, fingerprints, budget, growth."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.output.folder import OutputDir
from pipeline.output.journal import journal_line
from pipeline.records import RESULT_SCHEMA, ResultRow
from pipeline.report.status import read_status
from pipeline.sources.manifest import write_manifest
from tests.fakes import HANG, ScriptedServer, digest_of_file, json_error
from tests.helpers import KEY, SAMPLES, results, spawn_run

pytestmark = pytest.mark.usefixtures("fast_backoff")


@pytest.fixture
def many(tmp_path: Path) -> Path:
    """30 distinct small images (each a different digest), in a folder."""
    from PIL import Image

    root = tmp_path / "many"
    root.mkdir()
    for i in range(30):
        Image.new("RGB", (32 + i, 24), (i * 8, 255 - i * 8, 7)).save(root / f"img_{i:02d}.png")
    return root


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", *args, "--quiet"])
    return result.exit_code, result.output


def ids_once(out: Path) -> list[str]:
    rows = results(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id has more than one row"
    return ids


@pytest.mark.parametrize("concurrency", [1, 6])
def test_kill_9_resends_at_most_what_was_in_flight(
    tmp_path: Path, many: Path, server: ScriptedServer, key: str, concurrency: int
) -> None:
    out = tmp_path / "out"
    proc = spawn_run(
        str(many),
        "-o",
        str(out),
        "--endpoint",
        server.url,
        "--concurrency",
        str(concurrency),
        "--rows-per-shard",
        "7",
    )
    kill_at = 17
    answered_before: set[str] = set()

    def kill(received: int) -> None:
        if received == kill_at:
            answered_before.update(server.answered)  # answers sent before the kill
            os.kill(proc.pid, signal.SIGKILL)

    server.on_request = kill
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    first_run = server.requests_by_digest()
    assert len(answered_before) >= kill_at - concurrency

    server.on_request = None
    server.seen.clear()
    code, output = run_cli(str(many), "-o", str(out), "--endpoint", server.url)
    assert code == 0, output
    second_run = server.requests_by_digest()
    resent = set(second_run) & answered_before
    # Only answers that had not reached the journal (at most one per worker) are paid twice.
    assert len(resent) <= concurrency
    if concurrency == 1:
        assert resent == set()  # one at a time: every answer was journaled before the next send
    assert len(set(first_run) | set(second_run)) == 30
    assert sorted(ids_once(out)) == sorted(
        r["id"] for r in pq.read_table(out / ".caption/manifest.pq").to_pylist()
    )
    assert not list(out.glob("*.journal.jsonl"))
    assert not list(out.glob("*.tmp"))


def test_sigterm_stops_flushes_and_says_how_to_resume(
    tmp_path: Path, many: Path, server: ScriptedServer, key: str
) -> None:
    out = tmp_path / "out"
    proc = spawn_run(str(many), "-o", str(out), "--endpoint", server.url, "--concurrency", "2")

    def term(received: int) -> None:
        if received == 10:
            os.kill(proc.pid, signal.SIGTERM)
            # Hold every answer until the client has handled the signal, so that no answer
            # can reach it first and free a worker to send one more request.
            time.sleep(0.5)

    server.on_request = term
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted by SIGTERM" in stderr
    assert "rerun the same command to resume" in stderr
    # Flushed: complete shards, no journal left behind.
    assert list(out.glob("part-*.parquet"))
    assert not list(out.glob("*.journal.jsonl"))
    done = ids_once(out)
    # In flight at the signal: the 10th request and at most one more (2 workers). Nothing
    # was sent after it, and everything in flight was answered and written.
    assert 10 <= server.count() <= 11
    assert len(done) == server.count()

    server.on_request = None
    code, output = run_cli(str(many), "-o", str(out), "--endpoint", server.url)
    assert code == 0, output
    assert f"({len(done)} already done" in output
    assert len(ids_once(out)) == 30
    assert server.count() == 30


@pytest.mark.timeout(60)
def test_a_second_ctrl_c_ends_the_grace_period_at_once(
    tmp_path: Path, many: Path, server: ScriptedServer, key: str
) -> None:
    """Requests that hang would hold the first Ctrl-C for its whole 10 s grace period."""
    hanging = sorted(many.iterdir())[5:]
    for path in hanging:
        server.plan(digest_of_file(path), HANG)
    out = tmp_path / "out"
    proc = spawn_run(str(many), "-o", str(out), "--endpoint", server.url, "--concurrency", "4")
    deadline = time.monotonic() + 30
    while sum(server.answered.values()) < 5 or server.count() < 9:
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    interrupted = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - interrupted < 5  # not the 10 s grace period
    assert proc.returncode == 130
    assert "SIGINT again: stopping now" in stderr
    assert "Traceback" not in stderr
    # The five answers that arrived are safe; the hanging rows stay pending.
    assert sorted(Path(r["source"]).name for r in results(out)) == [
        p.name for p in sorted(many.iterdir())[:5]
    ]


def test_status_of_a_folder_being_written_says_running(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    out = tmp_path / "out"
    assert run_cli(str(SAMPLES), "-o", str(out), "--endpoint", server.url)[0] == 0
    row = ResultRow(id="x", source="y", status="ok", attempts=1, latency_s=0.1, finished_at_ms=0)
    (out / "part-00001.journal.jsonl").write_bytes(journal_line(row))
    status = ["status", str(out)]
    with OutputDir(out).lock():
        text = CliRunner().invoke(cli, status).output
        assert "running      a run is writing this folder now (1 journaled)" in text
        assert "interrupted" not in text
    text = CliRunner().invoke(cli, status).output
    assert "running" not in text


def test_a_killed_runs_journal_is_folded(tmp_path: Path) -> None:
    """A journal (and a torn last line, and a stale temp file) left by a kill are
    recovered; here in the older layout's names, which are still read."""
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(
        pa.table({"id": ["a", "b"], "source": ["x", "y"], "label": ["cat", "dog"]}),
        out / "manifest.parquet",
    )
    line = {
        "id": "b",
        "source": "y",
        "status": "ok",
        "caption": "c",
        "attempts": 1,
        "latency_s": 0.5,
        "finished_at": 1_700_000_000_000,
        "cost_usd": 0.01,
    }
    (out / "part-00003.journal.jsonl").write_text(json.dumps(line) + '\n{"id": "a", "sta')
    (out / "part-00002.parquet.tmp").write_bytes(b"half a shard")
    OutputDir(out).recover()
    assert not (out / "part-00002.parquet.tmp").exists()
    assert not (out / "part-00003.journal.jsonl").exists()
    shard = pq.read_table(out / "part-00003.parquet")
    assert shard.schema.equals(RESULT_SCHEMA)  # the label stays in the manifest
    (row,) = shard.to_pylist()
    assert (row["id"], row["caption"], row["cost_usd"]) == ("b", "c", 0.01)


def test_retry_errors_replaces_error_rows(
    tmp_path: Path, server: ScriptedServer, key: str, id_parts: str
) -> None:
    imgs = tmp_path / "imgs"
    shutil.copytree(SAMPLES, imgs)
    for name in ("sunset.jpg", "icon.gif"):
        server.plan(digest_of_file(imgs / name), json_error(400, "rejected"))
    out = tmp_path / "out"
    code, _ = run_cli(str(imgs), "-o", str(out), "--endpoint", server.url, "--rows-per-shard", "2")
    assert code == 1
    assert sorted(r["status"] for r in results(out)) == ["error"] * 2 + ["ok"] * 4

    # A plain rerun does not resend errors, and says the folder still holds them...
    code, output = run_cli(str(imgs), "-o", str(out), "--endpoint", server.url)
    assert code == 1
    assert server.count() == 6
    assert f"2 error rows in {out}: `caption status {out}` shows them" in output
    assert "rerun with --retry-errors to send them again" in output
    # ...--retry-errors does, and the new rows replace the old ones.
    code, output = run_cli(str(imgs), "-o", str(out), "--endpoint", server.url, "--retry-errors")
    assert code == 0, output
    assert server.count() == 8
    assert len(ids_once(out)) == 6
    assert [r["status"] for r in results(out)] == ["ok"] * 6


def test_fingerprint_mismatch_refuses(tmp_path: Path, server: ScriptedServer, key: str) -> None:
    out = tmp_path / "out"
    src = str(SAMPLES / "icon.gif")
    assert run_cli(src, "-o", str(out), "--endpoint", server.url)[0] == 0
    before = sorted(p.name for p in out.iterdir())
    code, output = run_cli(
        src, "-o", str(out), "--endpoint", server.url, "--model", "gpt:o3", "--prompt", "other"
    )
    assert code == 2
    assert "holds results of a different job" in output
    assert 'model: "gpt:gpt-4o" -> "gpt:o3"' in output
    assert "prompt:" in output
    assert "use a new output folder" in output
    assert sorted(p.name for p in out.iterdir()) == before
    # Limits are not part of the job: changing them resumes fine.
    code, _ = run_cli(
        src, "-o", str(out), "--endpoint", server.url, "--concurrency", "3", "--max-cost", "5"
    )
    assert code == 0
    assert server.count() == 1


def test_budget_cap_stops_before_the_cap_and_a_higher_cap_finishes(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    imgs = tmp_path / "imgs"
    shutil.copytree(SAMPLES, imgs)
    out = tmp_path / "out"
    args = [
        str(imgs),
        "-o",
        str(out),
        "--endpoint",
        server.url,
        "--concurrency",
        "1",
        "--max-tokens",
        "100",
    ]
    result = CliRunner().invoke(cli, ["run", *args, "--quiet", "--max-cost", "0.008"])
    assert result.exit_code == 4
    rows = results(out)
    spent = sum(r["cost_usd"] for r in rows)
    assert 0 < len(rows) < 6
    assert spent <= 0.008
    assert f"with ${spent:.4f} spent; the next row would make it $" in result.output
    assert "1 x max_tokens 100 at $10/1M output" in result.output
    assert "raise --max-cost and rerun the same command" in result.output
    assert "a smaller max_tokens reserves less, but it is another job" in result.output
    assert f"({6 - len(rows)} rows pending in {out})" in result.output
    assert server.count() == len(rows)

    # The advice holds: a smaller max_tokens into this folder is refused as another job.
    code, output = run_cli(*args[:-1], "50", "--max-cost", "1")
    assert code == 2, output
    assert server.count() == len(rows)

    code, output = run_cli(*args, "--max-cost", "1")
    assert code == 0, output
    assert len(ids_once(out)) == 6
    assert server.count() == 6


def test_grown_source_sends_only_new_rows(tmp_path: Path, server: ScriptedServer, key: str) -> None:
    imgs = tmp_path / "incoming"
    imgs.mkdir()
    for name in ("sunset.jpg", "icon.gif"):
        shutil.copy(SAMPLES / name, imgs / name)
    out = tmp_path / "out"
    os.chdir(tmp_path)
    assert run_cli("incoming", "-o", "out", "--endpoint", server.url)[0] == 0
    for name in ("forest.webp", "poster.jpg", "checkerboard.png"):
        shutil.copy(SAMPLES / name, imgs / name)
    server.seen.clear()
    code, output = run_cli("incoming", "-o", "out", "--endpoint", server.url)
    assert code == 0
    assert "3 ok, 0 errors of 3 new (2 already done, 0 pending)" in output
    assert set(server.requests_by_digest()) == {
        digest_of_file(imgs / n) for n in ("forest.webp", "poster.jpg", "checkerboard.png")
    }
    assert len(ids_once(out)) == 5


def test_status_reports_done_errors_pending_and_cost(
    tmp_path: Path, server: ScriptedServer, key: str, id_parts: str
) -> None:
    imgs = tmp_path / "imgs"
    shutil.copytree(SAMPLES, imgs)
    server.plan(digest_of_file(imgs / "icon.gif"), json_error(422, "no"))
    server.plan(digest_of_file(imgs / "sunset.jpg"), *[json_error(500, "x")] * 2)
    (imgs / "broken.png").write_text("nope")
    out = tmp_path / "out"
    code, _ = run_cli(str(imgs), "-o", str(out), "--endpoint", server.url, "--max-attempts", "2")
    assert code == 1
    # The source grows by one image that no run has seen yet: it is pending.
    (imgs / "new.png").write_bytes((imgs / "checkerboard.png").read_bytes() + b"\0")
    write_manifest([str(imgs)], out / ".caption/manifest.pq")
    result = CliRunner().invoke(cli, ["status", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = results(out)
    assert report["manifest_rows"] == 8
    assert (report["done"], report["ok"], report["errors"], report["pending"]) == (7, 4, 3, 1)
    assert report["errors_by_kind"] == {"invalid_image": 1, "rejected": 1, "transient": 1}
    assert report["cost_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in rows))
    assert report["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in rows)
    assert (
        report["fingerprint"] == json.loads((out / ".caption/run.json").read_text())["fingerprint"]
    )
    text = CliRunner().invoke(cli, ["status", str(out)]).output
    assert "done         7 (4 ok, 3 errors: invalid_image 1, rejected 1, transient 1)" in text
    assert "pending      1" in text


def test_status_of_a_folder_that_is_not_an_output(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a caption output folder" in result.output


def test_run_json_never_holds_the_key(tmp_path: Path, server: ScriptedServer, key: str) -> None:
    out = tmp_path / "out"
    assert run_cli(str(SAMPLES / "icon.gif"), "-o", str(out), "--endpoint", server.url)[0] == 0
    meta = json.loads((out / ".caption/run.json").read_text())
    assert KEY not in json.dumps(meta)
    assert meta["job"]["endpoint"] == server.url
    assert meta["totals"]["ok"] == 1
    assert meta["runs"][0]["exit_code"] == 0


def test_unchanged_rerun_sends_nothing(tmp_path: Path, server: ScriptedServer, key: str) -> None:
    out = tmp_path / "out"
    assert run_cli(str(SAMPLES), "-o", str(out), "--endpoint", server.url)[0] == 0
    code, output = run_cli(str(SAMPLES), "-o", str(out), "--endpoint", server.url)
    assert code == 0
    assert "0 ok, 0 errors of 0 new (6 already done, 0 pending)" in output
    assert server.count() == 6


def test_a_second_run_on_the_same_folder_is_refused(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with OutputDir(out).lock():
        code, output = run_cli(str(SAMPLES), "-o", str(out), "--endpoint", server.url)
    assert code == 2
    assert "is in use by another caption run" in output
    assert server.count() == 0
    # Released: the run goes ahead.
    assert run_cli(str(SAMPLES), "-o", str(out), "--endpoint", server.url)[0] == 0


def test_the_short_and_the_prefixed_model_name_are_one_job(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    out = tmp_path / "out"
    src = str(SAMPLES / "icon.gif")
    assert run_cli(src, "-o", str(out), "--endpoint", server.url, "--model", "gpt-4o")[0] == 0
    code, output = run_cli(src, "-o", str(out), "--endpoint", server.url, "--model", "gpt:gpt-4o")
    assert code == 0, output
    assert json.loads((out / ".caption/run.json").read_text())["job"]["model"] == "gpt:gpt-4o"
    # A folder written before names were made canonical resumes too.
    meta = json.loads((out / ".caption/run.json").read_text())
    meta["job"]["model"] = "gpt-4o"
    meta["fingerprint"] = "0123456789abcdef"  # what the old code computed, in effect
    (out / ".caption/run.json").write_text(json.dumps(meta))
    assert run_cli(src, "-o", str(out), "--endpoint", server.url)[0] == 0
    assert server.count() == 1


@pytest.mark.parametrize(
    ("cwd", "spelling"),
    [(".", "ABS/imgs"), (".", "./imgs/"), ("imgs", "."), ("sub", "../imgs"), (".", "link/imgs")],
)
def test_the_same_folder_named_another_way_is_not_paid_for_again(
    tmp_path: Path,
    server: ScriptedServer,
    key: str,
    monkeypatch: pytest.MonkeyPatch,
    cwd: str,
    spelling: str,
) -> None:
    shutil.copytree(SAMPLES, tmp_path / "imgs")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert run_cli("imgs", "-o", str(out), "--endpoint", server.url)[0] == 0
    monkeypatch.chdir(tmp_path / cwd)
    code, output = run_cli(
        spelling.replace("ABS", str(tmp_path)), "-o", str(out), "--endpoint", server.url
    )
    assert code == 0, output
    assert "0 ok, 0 errors of 0 new (6 already done, 0 pending)" in output
    assert server.count() == 6
    status = read_status(out)
    assert (status.manifest_rows, status.ok) == (6, 6)


def test_sources_that_share_no_id_with_the_folder_are_refused(
    tmp_path: Path, server: ScriptedServer, key: str, id_parts: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another dataset into a folder with results: almost surely a mistake."""
    shutil.copytree(SAMPLES, tmp_path / "imgs")
    shutil.copytree(SAMPLES, tmp_path / "other")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert run_cli("imgs", "-o", str(out), "--endpoint", server.url)[0] == 0
    manifest = (out / ".caption/manifest.pq").read_bytes()
    code, output = run_cli("other", "-o", str(out), "--endpoint", server.url)
    assert code == 2
    assert (
        f"{out} holds 6 results of imgs, and none of their ids is among the rows of other" in output
    )
    assert "--accept-new-source" in output
    assert server.count() == 6  # nothing was sent
    assert (out / ".caption/manifest.pq").read_bytes() == manifest  # nor replaced
    assert not list(out.glob("*.tmp"))
    code, output = run_cli("other", "-o", str(out), "--endpoint", server.url, "--accept-new-source")
    assert code == 0, output
    assert server.count() == 12
