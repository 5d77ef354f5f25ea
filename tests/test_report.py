"""caption report: the figures it computes, and the page as a real browser shows it."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.report.page import compute, is_report
from tests.buckets import client
from tests.fakes import Reply, ScriptedServer, digest_of_file
from tests.helpers import SAMPLES, results

SCHEMA = {
    "type": "object",
    "properties": {
        "scene": {"type": "string", "enum": ["indoor", "outdoor", "abstract"]},
        "people": {"type": "boolean"},
        "caption": {"type": "string"},
    },
    "required": ["scene", "people", "caption"],
}


@pytest.fixture
def folder(tmp_path: Path, server: ScriptedServer, key: str) -> Path:
    """A structured job over the samples, one of them refused (an error row)."""
    (tmp_path / "labels.json").write_text(json.dumps(SCHEMA))
    server.plan(
        digest_of_file(SAMPLES / "icon.gif"),
        Reply(status=400, body={"error": {"message": "image too small to label", "type": "x"}}),
    )
    out = tmp_path / "out"
    args = ["run", str(SAMPLES), "-o", str(out), "--endpoint", server.url, "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--schema", str(tmp_path / "labels.json")])
    assert result.exit_code == 1, result.output
    return out


def test_the_figures(folder: Path) -> None:
    figures = compute(folder, "out")
    assert (figures.status.ok, figures.status.errors, figures.status.pending) == (5, 1, 0)
    assert figures.error_examples == {"rejected": "HTTP 400 x: image too small to label"}
    assert sum(n for _, n in figures.labels["scene"]) == 5
    assert {name for name, _ in figures.labels["people"]} <= {"true", "false"}
    assert len(figures.sample) == 5
    assert all(row["thumbnail"].startswith("data:image/jpeg;base64,") for row in figures.sample)
    assert set(figures.latency) == {"p50", "p95", "p99"}
    assert figures.attempts == [("1", 6)]


def test_the_page_in_a_real_browser(folder: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CAPTION_REQUIRE_BROWSER"):
            pytest.fail("no chromium: .ci/run should have installed Debian's")
        pytest.skip("no chromium here (.ci/run installs Debian's: apt-get install chromium)")
    from playwright import sync_api as playwright

    page_path = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["report", str(folder), "-o", str(page_path)])
    assert result.exit_code == 0, result.output
    html = page_path.read_text()
    # Self-contained: every resource inline (no scripts, styles, fonts or images to fetch).
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []
    assert "<script" not in html
    requests: list[str] = []
    failed: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        totals = page.inner_text("#totals")
        runs = page.inner_text("#runs")
        images = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert failed == []
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    assert "5\nrows ok" in totals
    assert "1\nerror rows" in totals
    assert "new rows" in runs
    assert "ran to the end (exit 1)" in runs
    assert len(images) == 5
    assert all(w > 0 for w in images)  # every thumbnail decoded
    shot = (tmp_path / "report.png").read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(shot) > 20_000


def test_the_runs_table_says_why_a_run_stopped_and_thumbnails_stand_upright(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees
    Image.new("RGB", (400, 200), (200, 30, 30)).save(imgs / "portrait.jpg", exif=exif.tobytes())
    out = tmp_path / "out"
    args = ["run", str(imgs), "-o", str(out), "--endpoint", server.url, "--quiet"]
    assert CliRunner().invoke(cli, [*args, "--max-cost", "0.000001"]).exit_code == 4
    assert CliRunner().invoke(cli, args).exit_code == 0
    figures = compute(out, "out")
    (row,) = figures.sample
    (stored,) = results(out)
    assert (stored["image_width"], stored["image_height"]) == (400, 200)  # as stored
    with Image.open(io.BytesIO(base64.b64decode(row["thumbnail"].split(",", 1)[1]))) as thumb:
        assert thumb.width < thumb.height  # as a viewer shows it
    page = tmp_path / "r.html"
    assert CliRunner().invoke(cli, ["report", str(out), "-o", str(page)]).exit_code == 0
    html = page.read_text()
    assert "stopped: budget (exit 4): " in html
    assert "ran to the end (exit 0)" in html


@pytest.mark.timeout(60)
def test_sampled_sources_are_read_bounded_never_hanging(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    """A FIFO, a link to /dev/zero and an oversized file in sampled rows' places: the
    report neither hangs nor fills the memory, and says why each has no thumbnail."""
    imgs = tmp_path / "imgs"
    shutil.copytree(SAMPLES, imgs)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["run", str(imgs), "-o", str(out), "--endpoint", server.url, "--quiet"]
    )
    assert result.exit_code == 0, result.output
    (imgs / "sunset.jpg").unlink()
    os.mkfifo(imgs / "sunset.jpg")
    (imgs / "poster.jpg").unlink()
    (imgs / "poster.jpg").symlink_to("/dev/zero")
    with open(imgs / "forest.webp", "wb") as f:
        f.truncate((64 << 20) + 1)  # sparse: over the cap without using the disk
    figures = compute(out, "out")
    reasons = {Path(r["source"]).name: r["no_thumbnail"] for r in figures.sample}
    assert reasons["sunset.jpg"] == "not a regular file"
    assert reasons["poster.jpg"] == "not a regular file"
    assert reasons["forest.webp"] == "over 64 MiB"
    assert reasons["checkerboard.png"] is None
    page = tmp_path / "r.html"
    result = CliRunner().invoke(cli, ["report", str(out), "-o", str(page)])
    assert result.exit_code == 0, result.output
    assert "(no thumbnail: not a regular file)" in page.read_text()


def test_report_and_export_targets_folders_buckets_and_files_not_ours(
    folder: Path, tmp_path: Path, bucket: str
) -> None:
    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, list(args))
        return result.exit_code, result.output

    # Missing folders are made.
    code, output = invoke("report", str(folder), "-o", str(tmp_path / "a" / "b" / "r.html"))
    assert code == 0, output
    page = (tmp_path / "a" / "b" / "r.html").read_text()
    assert is_report(tmp_path / "a" / "b" / "r.html")
    assert "caption report" in page
    # An earlier report is written over; any other file only with --force.
    assert invoke("report", str(folder), "-o", str(tmp_path / "a" / "b" / "r.html"))[0] == 0
    photo = tmp_path / "astronaut.png"
    shutil.copy(SAMPLES / "checkerboard.png", photo)
    before = photo.read_bytes()
    code, output = invoke("report", str(folder), "-o", str(photo))
    assert code == 2
    assert "not an earlier caption report" in output
    assert photo.read_bytes() == before  # untouched
    assert invoke("report", str(folder), "-o", str(photo), "--force")[0] == 0
    assert is_report(photo)
    # Buckets are targets like anywhere else.
    code, output = invoke("report", str(folder), "-o", f"s3://{bucket}/reports/r.html")
    assert code == 0, output
    body = client().get_object(Bucket=bucket, Key="reports/r.html")["Body"].read()
    assert b"caption report" in body
    code, output = invoke("export", str(folder), "-o", f"s3://{bucket}/exports/all.csv")
    assert code == 0, output
    csv_body = client().get_object(Bucket=bucket, Key="exports/all.csv")["Body"].read()
    assert len(csv_body.decode().strip().splitlines()) == 1 + 6  # a header and 6 rows
    code, output = invoke("export", str(folder), "-o", str(tmp_path / "new" / "x.parquet"))
    assert code == 0, output
    assert (tmp_path / "new" / "x.parquet").exists()
    assert not list((tmp_path / "new").glob(".*.tmp"))


def test_the_spread_counted_a_shard_at_a_time_matches_numpy_on_all_values() -> None:
    import numpy as np

    from pipeline.report.spread import Spread

    rng = np.random.default_rng(8)
    cases = {
        "latency": rng.lognormal(0.3, 0.8, 50_000),  # positive: log-spaced fine bins
        "tokens": rng.integers(0, 900, 50_000).astype(float),  # zeros: even fine bins
        "one value": np.full(1_000, 3.0),
    }
    for name, values in cases.items():
        values = values.copy()
        values[::97] = np.nan  # rows without the value (a near-copy's latency)
        shards = np.array_split(values, 7)
        spread = Spread()
        for shard in shards:
            spread.see(shard)
        for shard in shards:
            spread.count(shard)
        present = values[~np.isnan(values)]
        counts, edges = np.histogram(present, bins=30)
        assert spread.histogram() == (counts.tolist(), edges.round(3).tolist()), name
        exact = np.quantile(present, [0.5, 0.95, 0.99])
        got = spread.quantiles([0.5, 0.95, 0.99])
        for e, g in zip(exact, got, strict=True):
            # Within a fine bin: 0.02% for positive values, a 65,536th of the range else.
            width = (present.max() - present.min()) / 2**16
            tolerance = 2e-4 * e if name == "latency" else width
            assert abs(g - e) <= tolerance + 1e-12, (name, e, g)
