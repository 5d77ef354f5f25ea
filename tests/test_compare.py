"""`caption compare` against the fake endpoint served for real, with a quality knob: each
model answers a structured field wrongly at its own rate, so the ranking, the accuracies
and the recommendation can be checked against known truth."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

import pipeline
from pipeline.cli import cli
from pipeline.config.prices import cost_usd, load_price_table
from pipeline.quality.scores import agreement, consensus, score
from pipeline.testing.fake_quality import right_answer
from pipeline.testing.fake_server import FakeOptions, make_app
from tests.fakes import serve_in_thread
from tests.helpers import results

SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "enum": ["animal", "landscape", "object", "person"]},
        "count": {"type": "integer"},
    },
    "required": ["subject", "count"],
    "additionalProperties": False,
}
RATES = {"gpt:gpt-4o": 0.05, "gemini:gemini-2.0-flash-lite": 0.2, "qwen:qwen3-vl-flash": 0.45}


@pytest.fixture
def fake() -> Iterator[tuple[str, dict[str, int]]]:
    """The fake endpoint with its quality knob, served on 127.0.0.1; its request count."""
    app = make_app(FakeOptions(wrong_rates=RATES))
    counts: dict[str, int] = {"requests": 0}

    @__import__("aiohttp").web.middleware
    async def count(request, handler):  # type: ignore[no-untyped-def]
        counts["requests"] += 1
        return await handler(request)

    app.middlewares.append(count)
    with serve_in_thread(app) as base:
        yield f"{base}/chat/completions", counts


def source_with_truth(root: Path, n: int) -> Path:
    """`n` distinct images in a CSV list whose `subject_truth` is the right answer."""
    root.mkdir()
    lines = ["image,subject_truth,count_truth"]
    for i in range(n):
        path = root / f"img_{i:03d}.png"
        Image.new("RGB", (16 + i, 16 + i % 7), (i % 251, 3 * i % 251, 7 * i % 251)).save(path)
        right = right_answer(SCHEMA, hashlib.sha256(path.read_bytes()).hexdigest())
        lines.append(f"{path},{right['subject']},{right['count']}")
    listing = root / "list.csv"
    listing.write_text("\n".join(lines) + "\n")
    (root / "labels.json").write_text(json.dumps(SCHEMA))
    return listing


def compare_args(
    listing: Path,
    out: Path,
    url: str,
    *extra: str,
    models: Iterable[str] = RATES,
    labels: bool = True,
) -> list[str]:
    """`caption compare` of `listing` into `out` against the fake at `url`: each of
    `models` (the three of RATES), structured by the listing's labels.json unless not."""
    args = ["compare", str(listing), "-o", str(out), "--endpoint", url, "-q", *extra]
    if labels:
        args += ["--schema", str(listing.parent / "labels.json")]
    for model in models:
        args += ["--model", model]
    return args


def test_compare_ranks_models_by_accuracy_and_recommends_the_cheapest_adequate(
    tmp_path: Path, fake: tuple[str, dict[str, int]], key: str
) -> None:
    url, counts = fake
    listing = source_with_truth(tmp_path / "imgs", 260)
    out = tmp_path / "cmp"
    args = compare_args(listing, out, url, "--sample", "240", "--truth", "subject=subject_truth")
    args += ["--truth", "count=count_truth"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert counts["requests"] == 3 * 240
    table = {r["variant"]: r for r in pq.read_table(out / "compare.parquet").to_pylist()}
    assert set(table) == {"gpt-gpt-4o", "gemini-gemini-2.0-flash-lite", "qwen-qwen3-vl-flash"}
    sample_ids = [r["id"] for r in pq.read_table(out / "sample.pq").to_pylist()]
    for model, rate in RATES.items():
        row = table[model.replace(":", "-")]
        # Only `subject` (the first field) is made wrong: within 3 standard errors of its rate.
        sigma = math.sqrt(rate * (1 - rate) / 240)
        assert abs(row["accuracy_subject"] - (1 - rate)) < 3 * sigma + 1e-9, (model, row)
        assert row["accuracy_count"] == 1.0
        assert row["mae_count"] == 0.0
        shards = results(out / model.replace(":", "-"))
        assert sorted(r["id"] for r in shards) == sorted(sample_ids)  # the same sample
        price = load_price_table()[model]
        billed = sum(cost_usd(price, r["prompt_tokens"], r["completion_tokens"]) for r in shards)
        assert row["cost_usd"] == pytest.approx(billed, rel=1e-12)
        assert row["cost_per_1k_usd"] == pytest.approx(billed / 240 * 1000)
        assert row["projected_cost_usd"] == pytest.approx(billed / 240 * 260, rel=0.05)
    ranked = sorted(table.values(), key=lambda r: -r["quality"])
    assert [r["variant"] for r in ranked] == [m.replace(":", "-") for m in RATES]
    assert "recommended: gpt-gpt-4o" in result.output  # only it is within 2 points
    loose = CliRunner().invoke(cli, [*args, "--margin", "15"])
    assert loose.exit_code == 0, loose.output
    assert (
        "recommended: gemini-gemini-2.0-flash-lite" in loose.output
    )  # cheaper, within 15 points; qwen is not
    assert counts["requests"] == 3 * 240  # reruns send nothing
    page = (out / "compare.html").read_text()
    assert "<svg" in page
    assert "variants disagree" in page
    assert "<script" not in page


def test_without_truth_agreement_and_consensus_and_a_new_variant_runs_alone(
    tmp_path: Path, fake: tuple[str, dict[str, int]], key: str
) -> None:
    url, counts = fake
    listing = source_with_truth(tmp_path / "imgs", 60)
    out = tmp_path / "cmp"
    first = ["--model", "gpt:gpt-4o", "--model", "gemini:gemini-2.0-flash-lite"]
    args = compare_args(listing, out, url, "--sample", "50", models=())
    assert CliRunner().invoke(cli, [*args, *first]).exit_code == 0
    assert counts["requests"] == 100
    result = CliRunner().invoke(cli, [*args, *first, "--model", "qwen:qwen3-vl-flash"])
    assert result.exit_code == 0, result.output
    assert counts["requests"] == 150  # only the new variant was sent
    table = {r["variant"]: r for r in pq.read_table(out / "compare.parquet").to_pylist()}
    assert (
        table["gpt-gpt-4o"]["agreement_subject"] > table["qwen-qwen3-vl-flash"]["agreement_subject"]
    )
    assert all(r["agreement_count"] == 1.0 for r in table.values())
    chosen = pq.read_table(out / "consensus.parquet").to_pylist()
    assert {r["field"] for r in chosen} == {"subject", "count"}


def test_the_budget_holds_across_variants_and_a_dry_run_sends_nothing(
    tmp_path: Path, fake: tuple[str, dict[str, int]], key: str
) -> None:
    url, counts = fake
    listing = source_with_truth(tmp_path / "imgs", 30)
    out = tmp_path / "cmp"
    dry = CliRunner().invoke(cli, compare_args(listing, out, url, "--sample", "20", "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert counts["requests"] == 0
    assert "gpt-gpt-4o: sample of 20 at most $" in dry.output
    assert "all 30 images at most $" in dry.output
    result = CliRunner().invoke(
        cli,
        compare_args(
            listing, out, url, "--sample", "20", "--max-cost", "0.01", "--max-tokens", "100"
        ),
    )
    assert result.exit_code == 4, result.output
    assert "raise --max-cost and rerun the same command" in result.output
    spent = sum(r["cost_usd"] for v in out.iterdir() if v.is_dir() for r in results(v))
    assert 0 < spent <= 0.01
    assert 0 < counts["requests"] < 20  # stopped inside the first variant


def test_the_python_api_returns_the_table(
    tmp_path: Path, fake: tuple[str, dict[str, int]], key: str
) -> None:
    url, _ = fake
    listing = source_with_truth(tmp_path / "imgs", 20)
    frame = pipeline.compare(
        listing,
        tmp_path / "cmp",
        sample=10,
        models=["gpt:gpt-4o", "qwen:qwen3-vl-flash"],
        truth={"subject": "subject_truth"},
        endpoint=url,
        json_schema=SCHEMA,
    )
    assert list(frame["variant"]) == ["gpt-gpt-4o", "qwen-qwen3-vl-flash"]
    assert frame["accuracy_subject"].between(0, 1).all()
    assert frame.attrs["recommendation"].startswith("recommended: ")


def test_scores() -> None:
    assert score(["a", "b"], '["b", "c"]') == (1 / 3, None)
    assert score(3, "3") == (1.0, 0.0)
    assert score(2.5, 3) == (0.0, 0.5)
    assert score(True, "true") == (1.0, None)
    assert consensus(["a", "a", "b"]) == ("a", 2)
    assert consensus(["a", "b"]) is None  # a tie has none
    shares, chosen = agreement(
        {
            "x": {"1": {"f": 1}, "2": {"f": 2}},
            "y": {"1": {"f": 1}, "2": {"f": 3}},
            "z": {"1": {"f": 1}},
        },
        "f",
    )
    assert chosen == {"1": 1}
    assert shares == {"x": 1.0, "y": 1.0, "z": 1.0}


def test_the_page_in_a_real_browser(
    tmp_path: Path, fake: tuple[str, dict[str, int]], key: str
) -> None:
    import os
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CAPTION_REQUIRE_BROWSER"):
            pytest.fail("no chromium: .ci/run should have installed Debian's")
        pytest.skip("no chromium here (.ci/run installs Debian's: apt-get install chromium)")
    from playwright import sync_api as playwright

    url, _ = fake
    listing = source_with_truth(tmp_path / "imgs", 12)
    out = tmp_path / "cmp"
    args = compare_args(listing, out, url, "--sample", "10", "--truth", "subject=subject_truth")
    assert CliRunner().invoke(cli, args).exit_code == 0
    requests: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "compare.html").as_uri())
        page.wait_for_load_state("load")
        recommendation = page.inner_text("#recommendation")
        variants = page.inner_text("#variants")
        points = page.eval_on_selector_all("svg circle", "els => els.length")
        images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        browser.close()
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    assert recommendation.startswith("recommended: ")
    assert "qwen-qwen3-vl-flash" in variants
    assert points == 3
    assert len(images) == 10
    assert all(w > 0 for w in images)


def test_the_same_from_a_toml_file(
    tmp_path: Path, fake: tuple[str, dict[str, int]], key: str
) -> None:
    url, counts = fake
    listing = source_with_truth(tmp_path / "imgs", 12)
    (tmp_path / "short.txt").write_text("Label this image.")
    job = tmp_path / "job.toml"
    job.write_text(
        f'[endpoint]\nurl = "{url}"\n[request]\njson_schema = "{listing.parent / "labels.json"}"\n'
        '[compare]\nsample = 8\nseed = 3\nmodels = ["gpt:gpt-4o", "qwen:qwen3-vl-flash"]\n'
        f'prompt_files = ["{tmp_path / "short.txt"}"]\ntruth = {{ subject = "subject_truth" }}\n'
    )
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        cli, ["compare", str(listing), "-o", str(out), "--config", str(job)]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "compare.parquet").to_pylist()
    assert [r["variant"] for r in table] == ["gpt-gpt-4o--short", "qwen-qwen3-vl-flash--short"]
    assert all(r["prompt"] == "short" for r in table)
    assert counts["requests"] == 16
    bad = job.read_text().replace("seed = 3", "seeds = 3")
    job.write_text(bad)
    result = CliRunner().invoke(
        cli, ["compare", str(listing), "-o", str(out), "--config", str(job)]
    )
    assert result.exit_code == 2
    assert "[compare] seeds: unknown key" in result.output


def test_a_judge_ranks_free_text_captions_each_pair_asked_in_both_orders(
    tmp_path: Path, fake: tuple[str, dict[str, int]], key: str
) -> None:
    """Plain captions: the fake spoils each model's at its rate, and as a judge prefers the
    unspoiled one. Every pair of variants is asked about every image twice, A and B
    swapped; the win rates rank the models, and a rerun asks nothing again."""
    url, counts = fake
    listing = source_with_truth(tmp_path / "imgs", 80)
    out = tmp_path / "cmp"
    args = compare_args(
        listing, out, url, "--sample", "80", "--judge", "gpt:gpt-4.1-mini", labels=False
    )
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert counts["requests"] == 3 * 80 + 3 * 80 * 2  # 3 variants; 3 pairs x 2 orders
    judged = results(out / "judge-gpt-gpt-4.1-mini")
    prompts = pq.read_table(out / ".caption" / "judge.pq").to_pylist()
    asked: dict[tuple[str, frozenset[str]], list[tuple[str, str]]] = {}
    for p in prompts:
        pair = frozenset((p["shown_a"], p["shown_b"]))
        asked.setdefault((p["image_id"], pair), []).append((p["shown_a"], p["shown_b"]))
    assert len(asked) == 3 * 80
    for orders in asked.values():  # each pair about each image: once each way round
        assert len(orders) == 2
        assert orders[0] == orders[1][::-1]
    assert len(judged) == 480
    table = {r["variant"]: r for r in pq.read_table(out / "compare.parquet").to_pylist()}
    rates = [table[m.replace(":", "-")]["judge_win_rate"] for m in RATES]
    assert rates == sorted(rates, reverse=True)  # 5% spoiled beats 20% beats 45%
    assert all(
        table[v]["judge_win_rate_low"]
        <= table[v]["judge_win_rate"]
        <= table[v]["judge_win_rate_high"]
        for v in table
    )
    assert table["gpt-gpt-4o"]["quality"] == table["gpt-gpt-4o"]["judge_win_rate"]
    assert "recommended: gpt-gpt-4o" in result.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert counts["requests"] == 3 * 80 + 3 * 80 * 2  # nothing asked twice
