from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.config.prices import load_price_table
from pipeline.cost.images import image_tokens, max_image_tokens
from pipeline.cost.tokens import prompt_text_tokens
from tests.fakes import ScriptedServer, json_error, serve_in_thread
from tests.helpers import KEY, SAMPLES

PROMPT = "Describe this image in one concise sentence."


def estimate_json(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["estimate", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # logs go to stderr


def sample_sizes() -> list[tuple[int, int]]:
    sizes = []
    for path in sorted(SAMPLES.rglob("*.*")):
        with Image.open(path) as img:
            sizes.append(img.size)
    return sizes


def usd(tokens_in: int, tokens_out: int, price_in: str, price_out: str) -> float:
    total = Decimal(tokens_in) * Decimal(price_in) + Decimal(tokens_out) * Decimal(price_out)
    return float(total / Decimal(1_000_000))


def test_exact_estimate_for_local_images() -> None:
    report = estimate_json(str(SAMPLES))
    (model,) = report["models"]
    rule = load_price_table()["gpt-4o"].image
    image = sum(image_tokens(rule, w, h) for w, h in sample_sizes())
    text = 6 * prompt_text_tokens("", PROMPT)
    assert model == {
        "model": "gpt:gpt-4o",
        "images": 6,
        "image_tokens": image,
        "text_tokens": text,
        "input_tokens": image + text,
        "output_tokens_expected": 6000,  # no pilot, no history: n x max_tokens
        "output_tokens_max": 6000,
        "cost_expected_usd": usd(image + text, 6000, "2.5", "10"),
        "cost_max_usd": usd(image + text, 6000, "2.5", "10"),
        "cost_per_1k_usd": usd(image + text, 6000, "2.5", "10") / 6 * 1000,
        "image_tokens_exact": True,
    }
    assert report["sizes"]["headers"] == 6
    assert report["sizes"]["assumed"] == 0
    assert report["skipped"] == []


def test_models_side_by_side_and_detail_low() -> None:
    report = estimate_json(
        str(SAMPLES),
        "--model",
        "gpt-4o",
        "--model",
        "gpt:gpt-5-nano",
        "--model",
        "o3",
        "--detail",
        "low",
        "--max-tokens",
        "50",
    )
    assert [m["model"] for m in report["models"]] == ["gpt:gpt-4o", "gpt:gpt-5-nano", "gpt:o3"]
    by_model = {m["model"]: m for m in report["models"]}
    assert by_model["gpt:gpt-4o"]["image_tokens"] == 6 * 85  # low detail: base only
    assert by_model["gpt:o3"]["image_tokens"] == 6 * 75
    nano = load_price_table()["gpt-5-nano"].image
    # Patch models: detail is not documented to change anything.
    assert by_model["gpt:gpt-5-nano"]["image_tokens"] == sum(
        image_tokens(nano, w, h) for w, h in sample_sizes()
    )
    assert all(m["output_tokens_max"] == 300 for m in report["models"])


def test_url_sizes_from_columns_assumed_or_worst_case(tmp_path: Path) -> None:
    lst = tmp_path / "urls.csv"
    lst.write_text(
        "url,width,height\n"
        "https://x/1.jpg,1024,1024\n"
        "https://x/2.jpg,2048,4096\n"
        "https://x/3.jpg,,\n"
        "https://x/4.jpg,0,10\n"
    )
    report = estimate_json(str(lst))
    (m,) = report["models"]
    assert report["sizes"]["columns"] == 2
    assert report["sizes"]["assumed"] == 2
    assert m["image_tokens"] == 765 + 1105 + 2 * max_image_tokens(
        load_price_table()["gpt-4o"].image
    )
    report = estimate_json(str(lst), "--assume-size", "512x512")
    assert report["models"][0]["image_tokens"] == 765 + 1105 + 2 * 255
    assert report["sizes"]["assumed_as"] == "512x512"


def test_unreadable_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    shutil.copy(SAMPLES / "icon.gif", tmp_path / "ok.gif")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "fake.jpg").write_text("text")
    report = estimate_json(str(tmp_path))
    assert report["models"][0]["images"] == 1
    assert sorted((Path(s["source"]).name, s["reason"]) for s in report["skipped"]) == [
        ("empty.png", "empty file"),
        ("fake.jpg", "not a PNG, JPEG, WEBP or GIF image"),
    ]
    assert report["skipped_count"] == 2


def test_probe_urls_reads_only_the_first_bytes(tmp_path: Path) -> None:
    """A local image host that honours Range; the estimate reads sizes from headers."""
    ranges: list[str | None] = []

    async def image(request: web.Request) -> web.StreamResponse:
        ranges.append(request.headers.get("Range"))
        path = SAMPLES / request.match_info["name"]
        if not path.exists():
            return web.Response(status=404)
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/img/{name}", image)
    with serve_in_thread(app) as base:
        lst = tmp_path / "urls.txt"
        lst.write_text(
            "".join(f"{base}/img/{n}\n" for n in ("poster.jpg", "sunset.jpg", "gone.png"))
        )
        report = estimate_json(str(lst), "--probe-urls", "--assume-size", "64x64")
    assert report["sizes"]["probed"] == 2
    assert report["sizes"]["assumed"] == 1
    assert ranges == ["bytes=0-65535"] * 3
    rule = load_price_table()["gpt-4o"].image
    assert report["models"][0]["image_tokens"] == (
        image_tokens(rule, 1800, 2400) + image_tokens(rule, 640, 480) + image_tokens(rule, 64, 64)
    )


def test_pilot_sends_n_requests_and_states_its_cost(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMORIES_API_KEY", KEY)
    report = estimate_json(str(SAMPLES), "--pilot", "3", "--endpoint", server.url)
    assert server.count() == 3
    assert len(set(server.requests_by_digest())) == 3  # three different images
    pilot = report["pilot"]
    assert (pilot["requests"], pilot["ok"]) == (3, 3)
    assert pilot["cost_usd"] > 0
    m = report["models"][0]
    assert report["expected_basis"] == "mean of a pilot of 3 requests on gpt:gpt-4o"
    assert m["output_tokens_expected"] == round(pilot["completion_tokens_mean"] * 6)
    assert m["output_tokens_max"] == 6000


def test_dry_run_sends_nothing_and_writes_nothing(
    tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMORIES_API_KEY", KEY)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["run", str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "gpt:gpt-4o" in result.output
    assert result.output.rstrip().endswith(
        "ready: the config, the key, the output folder and every local file check out; "
        "nothing was sent"
    )
    assert server.count() == 0
    assert not out.exists()


def test_dry_run_into_a_folder_of_another_job_is_that_error_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMORIES_API_KEY", KEY)
    out = tmp_path / "out"
    icon = str(SAMPLES / "icon.gif")
    run = ["run", icon, "-o", str(out), "--endpoint", "fake", "--quiet"]
    assert CliRunner().invoke(cli, run).exit_code == 0
    result = CliRunner().invoke(cli, [*run, "--prompt", "other", "--dry-run"])
    assert result.exit_code == 2
    (line,) = result.output.splitlines()  # no $0 table before it
    assert line.startswith("caption: error: ")
    assert "holds results of a different job" in line


def test_dry_run_reports_missing_key_and_bad_files(
    tmp_path: Path, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEMORIES_API_KEY", raising=False)
    shutil.copy(SAMPLES / "icon.gif", tmp_path / "ok.gif")
    (tmp_path / "bad.png").write_text("nope")
    result = CliRunner().invoke(
        cli,
        ["run", str(tmp_path), "-o", str(tmp_path / "o"), "--endpoint", server.url, "--dry-run"],
    )
    assert result.exit_code == 2
    assert "no API key: set the environment variable MEMORIES_API_KEY" in result.output
    assert "1 file(s) would be error rows" in result.output
    assert "bad.png: not a PNG, JPEG, WEBP or GIF image" in result.output
    monkeypatch.setenv("MEMORIES_API_KEY", KEY)
    result = CliRunner().invoke(
        cli,
        ["run", str(tmp_path), "-o", str(tmp_path / "o"), "--endpoint", server.url, "--dry-run"],
    )
    assert result.exit_code == 1
    assert server.count() == 0


def test_estimate_of_a_resumed_job_counts_pending_rows_and_observed_output(
    tmp_path: Path,
) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("icon.gif", "sunset.jpg"):
        shutil.copy(SAMPLES / name, imgs / name)
    out = tmp_path / "out"
    assert (
        CliRunner()
        .invoke(cli, ["run", str(imgs), "-o", str(out), "--endpoint", "fake", "--quiet"])
        .exit_code
        == 0
    )
    shutil.copy(SAMPLES / "poster.jpg", imgs / "poster.jpg")
    report = estimate_json(str(imgs), "-o", str(out), "--endpoint", "fake")
    (m,) = report["models"]
    assert m["images"] == 1  # only the new image
    assert report["expected_basis"] == f"mean of 2 rows already answered in {out}"
    assert 0 < m["output_tokens_expected"] < 100
    # Without repeating the run's flags: the folder's own job is the one estimated.
    assert estimate_json(str(imgs), "-o", str(out)) == report
    # Another job's answers are not its expected output, and the estimate says why.
    other = estimate_json(str(imgs), "-o", str(out), "--max-tokens", "40")
    assert other["expected_basis"] != report["expected_basis"]
    assert any("differs in max_tokens" in note for note in other["notes"]), other["notes"]


def test_status_reconciles_estimate_with_billed_tokens(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        CliRunner()
        .invoke(cli, ["run", str(SAMPLES), "-o", str(out), "--endpoint", "fake", "--quiet"])
        .exit_code
        == 0
    )
    report = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    est = report["estimate"]
    estimated = estimate_json(str(SAMPLES))["models"][0]["input_tokens"]
    # The fake bills by the published rules, so the estimate is exact here.
    assert est["rows"] == 6
    assert est["prompt_tokens_estimated"] == estimated
    assert est["prompt_tokens_actual"] == report["prompt_tokens"]
    assert est["prompt_tokens_ratio"] == 1.0


def test_bad_assume_size() -> None:
    result = CliRunner().invoke(cli, ["estimate", str(SAMPLES), "--assume-size", "big"])
    assert result.exit_code == 2
    assert "--assume-size 'big': must be WIDTHxHEIGHT" in result.output


def test_pilot_refused_by_the_endpoint_exits_3(server: ScriptedServer, key: str) -> None:
    server.default = json_error(401, "invalid api key")
    result = CliRunner().invoke(
        cli, ["estimate", str(SAMPLES), "--pilot", "2", "--endpoint", server.url]
    )
    assert result.exit_code == 3
    assert "the endpoint refused the job: HTTP 401" in result.output


def test_a_pilot_into_the_output_folder_is_never_paid_for_twice(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    out = tmp_path / "out"
    report = estimate_json(str(SAMPLES), "--pilot", "2", "-o", str(out), "--endpoint", server.url)
    assert server.count() == 2
    pilot = report["pilot"]
    assert (pilot["requests"], pilot["ok"], pilot["written_to"]) == (2, 2, str(out))
    # The pilot rows are done: the estimate covers the other four, at the pilot's length.
    assert report["models"][0]["images"] == 4
    assert report["expected_basis"] == "mean of a pilot of 2 requests on gpt:gpt-4o"
    assert pilot["cost_usd"] == pytest.approx(
        sum(r["cost_usd"] for r in pq.read_table(next(out.glob("part-*.parquet"))).to_pylist())
    )
    # The real run sends only the four the pilot did not.
    result = CliRunner().invoke(
        cli, ["run", str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "4 ok, 0 errors of 4 new (2 already done, 0 pending)" in result.output
    assert server.count() == 6
    assert len(set(server.requests_by_digest())) == 6


def test_a_pilot_sample_is_random_but_repeatable(tmp_path: Path) -> None:
    from pipeline.records import ManifestRow
    from pipeline.sources.manifest import sample_rows

    rows = [ManifestRow(id=str(i), source=f"/{i}") for i in range(1000)]
    first = [r.id for r in sample_rows(iter(rows), 10)]
    assert first == [r.id for r in sample_rows(iter(rows), 10)]
    assert len(set(first)) == 10
    assert first != [str(i) for i in range(10)]  # not simply the first rows
    assert len(sample_rows(iter(rows[:3]), 10)) == 3


def test_a_custom_model_without_an_image_rule_is_estimated_on_text(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        '[request]\nmodel = "vllm:llava"\n'
        '[prices."vllm:llava"]\ninput_per_1m = 0.5\noutput_per_1m = 1.5\n'
    )
    result = CliRunner().invoke(cli, ["estimate", str(SAMPLES), "--config", str(job), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    (model,) = report["models"]
    assert (model["model"], model["images"], model["image_tokens"]) == ("vllm:llava", 6, 0)
    assert model["text_tokens"] > 0
    assert any("image tokens are not counted" in note for note in report["notes"])


def test_dry_run_of_a_source_run_would_refuse_is_not_ready(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--endpoint", server.url]
    dry = CliRunner().invoke(cli, ["run", *args, "--dry-run"])
    real = CliRunner().invoke(cli, ["run", *args])
    assert (dry.exit_code, real.exit_code) == (2, 2)
    assert "ready" not in dry.output
    assert "no images found" in dry.output
