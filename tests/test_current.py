"""What the current manifest says of answered rows (`output/current.py`): files deleted
are removed (kept, counted apart, not handed on); files replaced at the same path are
captioned again, the old answer superseded with its cost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline
from pipeline.cli import cli
from tests.fakes import ScriptedServer
from tests.helpers import SAMPLES, results


def _answered_samples(tmp_path: Path, server: ScriptedServer) -> tuple[Path, Path, list[str]]:
    """A copy of the samples, answered once: (the images, the output folder, the run's
    arguments)."""
    imgs = tmp_path / "imgs"
    shutil.copytree(SAMPLES, imgs)
    out = tmp_path / "out"
    args = ["run", str(imgs), "-o", str(out), "--endpoint", server.url]
    assert CliRunner().invoke(cli, [*args, "--quiet"]).exit_code == 0
    return imgs, out, args


def test_removed_sources_are_counted_apart_and_left_out_unless_asked(
    tmp_path: Path, server: ScriptedServer, key: str, id_parts: str
) -> None:
    imgs = tmp_path / "imgs"
    shutil.copytree(SAMPLES, imgs)
    out = tmp_path / "out"
    args = ["run", str(imgs), "-o", str(out), "--endpoint", server.url, "--quiet"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    gone = [imgs / "sunset.jpg", imgs / "icon.gif"]
    kept = {p.name: p.read_bytes() for p in gone}
    for path in gone:
        path.unlink()
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert server.count() == 6  # nothing sent for the removal
    assert len(results(out)) == 6  # not deleted: paid for

    status = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    assert (status["manifest_rows"], status["done"], status["removed"]) == (4, 6, 2)
    assert status["pending"] == 0
    text = CliRunner().invoke(cli, ["status", str(out)]).output
    assert "removed      2 of the done rows" in text

    csv = tmp_path / "all.csv"
    assert "exported 4 rows" in CliRunner().invoke(cli, ["export", str(out), "-o", str(csv)]).output
    wide = CliRunner().invoke(cli, ["export", str(out), "-o", str(csv), "--include-removed"])
    assert "exported 6 rows" in wide.output
    assert len(pipeline.read_results(out)) == 4
    assert len(pipeline.read_results(out, include_removed=True)) == 6
    page = tmp_path / "r.html"
    assert CliRunner().invoke(cli, ["report", str(out), "-o", str(page)]).exit_code == 0
    assert "<b>2</b>removed (source gone)" in page.read_text()

    for name, data in kept.items():  # the files come back: current again, not re-sent
        (imgs / name).write_bytes(data)
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert server.count() == 6
    status = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    assert status["removed"] == 0


def test_a_file_replaced_at_the_same_path_is_captioned_again(
    tmp_path: Path, server: ScriptedServer, key: str, id_parts: str
) -> None:
    from PIL import Image

    imgs, out, args = _answered_samples(tmp_path, server)
    before = {r["source"]: r for r in results(out)}
    photo = imgs / "sunset.jpg"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(photo)  # a new photo, same path
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "1 new, 1 of them changed since the last run" in result.output
    assert server.count() == 7  # only the replaced file was sent again
    rows = {r["source"]: r for r in results(out)}
    assert len(rows) == len(results(out)) == 6  # one current row per image
    assert rows[str(photo)]["id"] == before[str(photo)]["id"]
    assert rows[str(photo)]["caption"] != before[str(photo)]["caption"]
    status = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    assert status["superseded"] == 1  # the old answer, in the ledger with its cost
    paid = sum(r["cost_usd"] for r in results(out)) + before[str(photo)]["cost_usd"]
    assert abs(status["cost_usd"] - paid) < 1e-12
    page = tmp_path / "r.html"
    assert CliRunner().invoke(cli, ["report", str(out), "-o", str(page)]).exit_code == 0
    assert "<b>1</b>changed in the last run" in page.read_text()
    again = CliRunner().invoke(cli, args)
    assert "0 new" in again.output
    assert server.count() == 7  # unchanged since: nothing sent
    frame = pipeline.read_results(out)
    assert not [c for c in frame.columns if c.startswith("_caption_")]  # caption's own


def test_a_file_only_touched_is_not_sent_again(
    tmp_path: Path, server: ScriptedServer, key: str, id_parts: str
) -> None:
    import os

    imgs, out, args = _answered_samples(tmp_path, server)
    rows = results(out)
    assert all(r["source_sha256"] for r in rows)  # the bytes each answer was made from
    touched = imgs / "poster.jpg"
    os.utime(touched, ns=(1, 1_000_000_000))  # a new time, the same bytes
    replaced = imgs / "sunset.jpg"
    replaced.write_bytes(replaced.read_bytes() + b"\0")  # new bytes
    result = CliRunner().invoke(cli, [*args, "-v"])
    assert result.exit_code == 0, result.output
    assert "1 new, 1 of them changed since the last run" in result.output
    assert "1 file(s) with a new modification time but the same bytes" in result.output
    assert server.count() == 7  # only the file whose bytes changed
    # And the night after, the touched file's new time is the one on record.
    assert CliRunner().invoke(cli, [*args, "--quiet"]).exit_code == 0
    assert server.count() == 7


def test_a_night_with_files_replaced_removed_and_added(
    tmp_path: Path, server: ScriptedServer, key: str, id_parts: str
) -> None:
    from PIL import Image

    from tests.helpers import distinct_images

    imgs = distinct_images(tmp_path / "imgs", 20)
    out = tmp_path / "out"
    args = ["run", str(imgs), "-o", str(out), "--endpoint", server.url]
    assert CliRunner().invoke(cli, [*args, "--quiet"]).exit_code == 0
    first = {r["source"]: r for r in results(out)}
    names = sorted(imgs.iterdir())
    replaced, removed = names[:5], names[5:8]
    for i, path in enumerate(replaced):  # new pictures at the same paths
        Image.new("RGB", (40 + i, 30), (200, 10 * i, 90)).save(path)
    for path in removed:
        path.unlink()
    for i in range(4):
        Image.new("RGB", (50, 20 + i), (i, 90, 200)).save(imgs / f"added_{i}.png")

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "9 new, 5 of them changed since the last run" in result.output
    assert server.count() == 20 + 9
    rows = {r["source"]: r for r in pipeline.read_results(out).to_dict("records")}
    assert len(rows) == 20 - 3 + 4
    for path in replaced:  # the new answer is the current row
        assert rows[str(path)]["caption"] != first[str(path)]["caption"]
        assert rows[str(path)]["id"] == first[str(path)]["id"]
    assert not any(str(path) in rows for path in removed)
    csv = tmp_path / "all.csv"
    export = CliRunner().invoke(cli, ["export", str(out), "-o", str(csv)])
    assert "exported 21 rows" in export.output
    # The history keeps every paid row: 29 requests, 29 attempts on the books.
    status = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    assert status["superseded"] == 5
    assert status["removed"] == 3
    last_night = max(r["finished_at"] for r in first.values())
    tonight = [r for r in results(out) if r["finished_at"] > last_night]
    assert len(tonight) == 9
    paid = sum(r["cost_usd"] for r in [*first.values(), *tonight])
    assert status["cost_usd"] == pytest.approx(paid, abs=1e-4)  # shown to 4 places
