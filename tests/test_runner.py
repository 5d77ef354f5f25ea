from __future__ import annotations

import base64
import shutil
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from pipeline.cli import cli
from pipeline.testing.fake_server import caption_for
from tests.fakes import (
    DROP,
    HANG,
    TRUNCATED,
    Reply,
    ScriptedServer,
    digest_of_file,
    json_error,
    memories_error,
)
from tests.helpers import KEY, SAMPLES, by_name, results

pytestmark = pytest.mark.usefixtures("fast_backoff")


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    shutil.copytree(SAMPLES, root)
    return root


def caption(*args: str) -> Result:
    return CliRunner().invoke(cli, ["run", *args, "--quiet"], catch_exceptions=False)


def test_every_row_once_with_its_own_caption_usage_and_exact_cost(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    out = tmp_path / "out"
    result = caption(str(imgs), "-o", str(out), "--endpoint", server.url)
    assert result.exit_code == 0, result.output
    rows = results(out)
    assert len(rows) == 6
    assert len({r["id"] for r in rows}) == 6
    manifest = pq.read_table(out / ".caption/manifest.pq").to_pylist()
    assert {r["id"] for r in rows} == {m["id"] for m in manifest}
    for row in rows:
        digest = digest_of_file(Path(row["source"]))
        assert row["status"] == "ok"
        assert row["caption"] == caption_for(digest)
        assert row["choices"] == [
            {"index": 0, "content": caption_for(digest), "refusal": None, "finish_reason": "stop"}
        ]
        assert row["error"] is None
        assert row["attempts"] == 1
        assert row["http_status"] == 200
        assert row["model"] == "gpt-4o"
        with Image.open(row["source"]) as img:
            assert (row["image_width"], row["image_height"]) == img.size
        assert row["response_id"] == f"chatcmpl-fake-{digest[:16]}"
        # cost: gpt-4o is $2.5 in / $10 out per 1M tokens, computed here independently.
        expected = (
            Decimal(row["prompt_tokens"]) * Decimal("2.5")
            + Decimal(row["completion_tokens"]) * Decimal("10")
        ) / Decimal(1_000_000)
        assert row["cost_usd"] == float(expected)
        assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    # 1024x1024 PNG at gpt-4o high/auto detail: 765 image tokens plus the prompt's text.
    checker = by_name(rows)["checkerboard.png"]
    text_only = by_name(rows)["icon.gif"]["prompt_tokens"] - 255  # 64x64: 85 + 1 tile
    assert checker["prompt_tokens"] == text_only + 765
    assert server.count() == 6
    assert "6 ok, 0 errors of 6 new" in result.output


def test_request_shape_auth_and_parameters(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        "[request]\nsystem_prompt = 'You label images.'\nprompt = 'What is it?'\n"
        "detail = 'low'\nresponse_format = 'json_object'\ntemperature = 0.2\ntop_p = 0.9\n"
        "frequency_penalty = 0.1\npresence_penalty = -0.1\nmax_tokens = 77\nstop = ['END']\n"
    )
    # A PNG named .jpg: the MIME type must come from the bytes.
    shutil.copy(imgs / "checkerboard.png", imgs / "misnamed.jpg")
    out = tmp_path / "out"
    assert (
        caption(
            str(imgs / "misnamed.jpg"),
            "-o",
            str(out),
            "--endpoint",
            server.url,
            "--config",
            str(job),
        ).exit_code
        == 0
    )
    (seen,) = server.seen
    assert seen.headers["Authorization"] == KEY  # memories.ai's raw form, no "Bearer"
    body = seen.body
    assert body["model"] == "gpt:gpt-4o"
    assert body["messages"][0] == {"role": "system", "content": "You label images."}
    text, image = body["messages"][1]["content"]
    assert text == {"type": "text", "text": "What is it?"}
    assert image["type"] == "image_url"
    assert image["image_url"]["detail"] == "low"
    data = (imgs / "checkerboard.png").read_bytes()
    assert image["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(data).decode()
    assert {
        k: body[k]
        for k in (
            "response_format",
            "temperature",
            "top_p",
            "frequency_penalty",
            "presence_penalty",
            "max_tokens",
            "stop",
            "n",
            "stream",
        )
    } == {
        "response_format": {"type": "json_object"},
        "temperature": 0.2,
        "top_p": 0.9,
        "frequency_penalty": 0.1,
        "presence_penalty": -0.1,
        "max_tokens": 77,
        "stop": ["END"],
        "n": 1,
        "stream": False,
    }


def test_bearer_scheme_and_url_passthrough(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    lst = tmp_path / "urls.txt"
    lst.write_text("https://img.example.com/a.jpg\n")
    out = tmp_path / "out"
    assert (
        caption(
            str(lst), "-o", str(out), "--endpoint", server.url, "--auth-scheme", "bearer"
        ).exit_code
        == 0
    )
    (seen,) = server.seen
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    url = seen.body["messages"][0]["content"][1]["image_url"]["url"]
    assert url == "https://img.example.com/a.jpg"
    assert "detail" not in seen.body["messages"][0]["content"][1]["image_url"]


def test_retries_per_fault_kind(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    d = {p.name: digest_of_file(p) for p in imgs.rglob("*.*")}
    server.plan(
        d["sunset.jpg"],
        json_error(500, "boom", **{"Retry-After": "0"}),
        json_error(503, "busy"),
        Reply(),
    )
    server.plan(
        d["checkerboard.png"],
        json_error(429, "slow down", "rate_limit_exceeded", **{"Retry-After": "0"}),
        Reply(),
    )
    server.plan(d["forest.webp"], DROP, TRUNCATED, Reply())
    server.plan(
        d["icon.gif"],
        Reply(body={"status": "errored", "error": {"message": "upstream"}}),
        memories_error(409, "conflict"),
        json_error(408, "timeout"),
        Reply(),
    )
    server.plan(d["poster.jpg"], json_error(400, "bad image", "invalid_image"))
    server.plan(d["panorama.png"], *[json_error(502, "bad gateway")] * 10)
    out = tmp_path / "out"
    result = caption(str(imgs), "-o", str(out), "--endpoint", server.url, "--max-attempts", "4")
    assert result.exit_code == 1  # finished, with error rows
    rows = by_name(results(out))
    assert {n: (r["status"], r["attempts"]) for n, r in rows.items()} == {
        "sunset.jpg": ("ok", 3),
        "checkerboard.png": ("ok", 2),
        "forest.webp": ("ok", 3),
        "icon.gif": ("ok", 4),
        "poster.jpg": ("error", 1),  # 400: never retried
        "panorama.png": ("error", 4),  # gave up after max_attempts
    }
    counts = server.requests_by_digest()
    assert {n: counts[d[n]] for n in rows} == {n: rows[n]["attempts"] for n in rows}
    assert rows["poster.jpg"]["error"] == "HTTP 400 invalid_image: bad image"
    assert rows["poster.jpg"]["error_kind"] == "rejected"
    assert rows["poster.jpg"]["http_status"] == 400
    assert rows["panorama.png"]["error"] == "HTTP 502 api_error: bad gateway"
    assert rows["panorama.png"]["error_kind"] == "transient"
    assert rows["sunset.jpg"]["caption"] == caption_for(d["sunset.jpg"])


def test_hang_times_out_and_is_retried(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    d = digest_of_file(imgs / "icon.gif")
    server.plan(d, HANG, Reply())
    out = tmp_path / "out"
    result = caption(
        str(imgs / "icon.gif"), "-o", str(out), "--endpoint", server.url, "--timeout", "1"
    )
    assert result.exit_code == 0
    (row,) = results(out)
    assert (row["status"], row["attempts"]) == ("ok", 2)
    assert server.count(d) == 2


def test_rejected_statuses_are_never_retried(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    files = sorted(p for p in imgs.rglob("*.*"))[:5]
    for status, path in zip((400, 404, 413, 415, 422), files, strict=True):
        server.plan(digest_of_file(path), memories_error(status, f"no {status}"))
    out = tmp_path / "out"
    lst = tmp_path / "l.txt"
    lst.write_text("\n".join(str(p) for p in files))
    assert caption(str(lst), "-o", str(out), "--endpoint", server.url).exit_code == 1
    rows = results(out)
    assert sorted((r["http_status"], r["attempts"], r["error_kind"]) for r in rows) == [
        (s, 1, "rejected") for s in (400, 404, 413, 415, 422)
    ]
    assert server.count() == 5


def test_no_request_for_unreadable_files(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    (imgs / "empty.png").write_bytes(b"")
    (imgs / "text.jpg").write_text("not an image at all")
    (imgs / "cut.png").write_bytes((imgs / "checkerboard.png").read_bytes()[:12])
    lst = tmp_path / "l.txt"
    lst.write_text(
        "imgs/sunset.jpg\nimgs/empty.png\nimgs/text.jpg\nimgs/cut.png\nimgs/missing.jpg\nimgs/poster.jpg\n"
    )
    out = tmp_path / "out"
    result = caption(
        str(lst),
        "-o",
        str(out),
        "--endpoint",
        server.url,
        "--config",
        str(_job(tmp_path, "[limits]\nmax_image_mb = 0.05\n")),
    )
    assert result.exit_code == 1
    rows = by_name(results(out))
    assert rows["sunset.jpg"]["status"] == "ok"
    errors = {n: r["error"] for n, r in rows.items() if r["status"] == "error"}
    assert set(errors) == {"empty.png", "text.jpg", "cut.png", "missing.jpg", "poster.jpg"}
    assert "header is unreadable" in errors["cut.png"]
    assert errors["empty.png"].endswith("empty file")
    assert errors["text.jpg"].endswith("not a PNG, JPEG, WEBP or GIF image")
    assert errors["missing.jpg"].endswith("no such file")
    assert "over the 0.05 MB cap" in errors["poster.jpg"]
    assert all(
        rows[n]["attempts"] == 0 and rows[n]["error_kind"] == "invalid_image" for n in errors
    )
    assert server.count() == 1  # only sunset.jpg was sent


def _job(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "reply",
    [
        json_error(401, "invalid api key"),
        memories_error(402, "insufficient balance"),
        json_error(403, "forbidden"),
        json_error(429, "You exceeded your current quota", "insufficient_quota"),
    ],
)
def test_fatal_answer_stops_the_run_and_marks_nothing_failed(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str, reply: Reply
) -> None:
    server.default = reply
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(imgs),
            "-o",
            str(out),
            "--endpoint",
            server.url,
            "--quiet",
            "--concurrency",
            "2",
        ],
    )
    assert result.exit_code == 3
    assert f"HTTP {reply.status}" in result.output
    assert "rerun the same command to resume" in result.output
    assert results(out) == []  # nothing marked as failed
    sent = server.count()
    assert 1 <= sent <= 2  # only what was in flight when the first refusal came back

    server.default = Reply()
    result = caption(str(imgs), "-o", str(out), "--endpoint", server.url)
    assert result.exit_code == 0
    assert len(results(out)) == 6
    assert all(r["status"] == "ok" for r in results(out))


def test_missing_key_exits_2_before_any_request(
    tmp_path: Path, imgs: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEMORIES_API_KEY", raising=False)
    result = CliRunner().invoke(
        cli, ["run", str(imgs), "-o", str(tmp_path / "o"), "--endpoint", server.url]
    )
    assert result.exit_code == 2
    assert "set the environment variable MEMORIES_API_KEY" in result.output
    assert server.count() == 0


def test_streaming_gives_the_same_row(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    plain, streamed = tmp_path / "plain", tmp_path / "streamed"
    src = str(imgs / "sunset.jpg")
    assert caption(src, "-o", str(plain), "--endpoint", server.url).exit_code == 0
    job = _job(tmp_path, "[request]\nstream = true\n")
    assert (
        caption(src, "-o", str(streamed), "--endpoint", server.url, "--config", str(job)).exit_code
        == 0
    )
    assert server.seen[1].body["stream"] is True
    assert server.seen[1].body["stream_options"] == {"include_usage": True}
    keys = (
        "caption",
        "choices",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost_usd",
        "response_id",
        "model",
        "system_fingerprint",
    )
    (a,), (b,) = results(plain), results(streamed)
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_key_never_written_anywhere(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    # A server that echoes the key back in its error message.
    server.plan(digest_of_file(imgs / "sunset.jpg"), json_error(400, f"bad request from key {KEY}"))
    server.plan(digest_of_file(imgs / "icon.gif"), *[json_error(500, f"oops {KEY}")] * 3)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        ["-vv", "run", str(imgs), "-o", str(out), "--endpoint", server.url, "--max-attempts", "3"],
    )
    assert result.exit_code == 1
    # -vv logs every failed row at debug level to stderr, which the runner captures.
    assert "failed: HTTP 400 api_error: bad request from key [redacted]" in result.output
    assert KEY not in result.output
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    rows = by_name(results(out))
    assert rows["sunset.jpg"]["error"] == "HTTP 400 api_error: bad request from key [redacted]"


def test_fake_endpoint_runs_without_a_key(
    tmp_path: Path, imgs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEMORIES_API_KEY", raising=False)
    out = tmp_path / "out"
    result = caption(str(imgs), "-o", str(out), "--endpoint", "fake")
    assert result.exit_code == 0, result.output
    rows = results(out)
    assert len(rows) == 6
    assert all(r["caption"] == caption_for(digest_of_file(Path(r["source"]))) for r in rows)


def test_a_storm_of_429s_does_not_burn_attempts(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    """Every image is rate limited 4 times before it is answered; max_attempts is 2."""
    rate_limited = json_error(429, "slow down", "rate_limit_exceeded", **{"Retry-After": "0"})
    digests = [digest_of_file(p) for p in imgs.rglob("*.*")]
    for d in digests:
        server.plan(d, *[rate_limited] * 4, Reply())
    out = tmp_path / "out"
    result = caption(str(imgs), "-o", str(out), "--endpoint", server.url, "--max-attempts", "2")
    assert result.exit_code == 0, result.output
    rows = results(out)
    assert [r["status"] for r in rows] == ["ok"] * 6
    assert [r["attempts"] for r in rows] == [5] * 6
    assert server.count() == 30


def test_rate_limit_waits_are_bounded_too(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    server.default = json_error(429, "slow down", "rate_limit_exceeded", **{"Retry-After": "0"})
    out = tmp_path / "out"
    job = _job(tmp_path, "[limits]\nmax_rate_limit_waits = 3\n")
    result = caption(
        str(imgs / "icon.gif"), "-o", str(out), "--endpoint", server.url, "--config", str(job)
    )
    assert result.exit_code == 1
    (row,) = results(out)
    assert (row["status"], row["error_kind"], row["attempts"]) == ("error", "rate_limited", 4)
    assert server.count() == 4


def test_a_2xx_other_than_200_is_parsed_and_a_bad_one_retried(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    d = digest_of_file(imgs / "icon.gif")
    server.plan(d, Reply(status=202, body={"accepted": True}), Reply())
    out = tmp_path / "out"
    assert caption(str(imgs / "icon.gif"), "-o", str(out), "--endpoint", server.url).exit_code == 0
    (row,) = results(out)
    assert (row["status"], row["attempts"], row["http_status"]) == ("ok", 2, 200)


def test_an_answer_with_odd_types_is_a_row_and_the_folder_stays_usable(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    # A value that did not fit its column used to make the journal unfoldable: the run
    # failed at the end with its answers paid for, and so did every rerun.
    odd = {
        "id": 7,
        "created": 2**70,
        "choices": [
            {"index": 2**40, "message": {"content": [{"type": "text", "text": "in parts"}]}}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
    server.plan(digest_of_file(imgs / "icon.gif"), Reply(body=odd))
    out = tmp_path / "out"
    assert caption(str(imgs), "-o", str(out), "--endpoint", server.url).exit_code == 0
    row = by_name(results(out))["icon.gif"]
    assert (row["status"], row["caption"], row["response_id"], row["created"]) == (
        "ok",
        "in parts",
        "7",
        None,
    )
    assert row["choices"] == [
        {"index": 0, "content": "in parts", "refusal": None, "finish_reason": None}
    ]
    status = CliRunner().invoke(cli, ["status", str(out), "--json"])
    assert status.exit_code == 0, status.output


def test_a_normal_run_says_only_the_summary(
    tmp_path: Path, imgs: Path, server: ScriptedServer, key: str
) -> None:
    """No INFO lines (ingest, compaction) without -v; counts in the right number."""
    server.plan(digest_of_file(imgs / "icon.gif"), json_error(400, "bad"))
    out = tmp_path / "out"
    result = caption(str(imgs), "-o", str(out), "--endpoint", server.url)
    assert result.exit_code == 1
    assert "INFO" not in result.output
    assert result.output.startswith("5 ok, 1 error of 6 new (0 already done, 0 pending)")
    assert f"1 error row in {out}:" in result.output
    result = caption(str(imgs), "-o", str(out), "--endpoint", server.url, "--retry-errors")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("1 ok, 0 errors of 0 new, 1 retried (5 already done")


def test_an_empty_output_path_is_refused_not_the_working_folder(
    tmp_path: Path, server: ScriptedServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    monkeypatch.chdir(tmp_path)
    for command in (
        ["run", str(SAMPLES), "-o", "", "--endpoint", server.url],
        ["ingest", str(SAMPLES), "-o", " "],
    ):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert "empty path" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing written where we stand
    assert server.count() == 0
