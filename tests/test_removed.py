"""Rows whose source left the manifest (`output/removed.py`): a nightly folder whose
files were deleted keeps their rows, counts them apart, and hands on only the current."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

import pipeline
from pipeline.cli import cli
from tests.fakes import ScriptedServer
from tests.helpers import SAMPLES, results


def test_removed_sources_are_counted_apart_and_left_out_unless_asked(
    tmp_path: Path, server: ScriptedServer, key: str
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
