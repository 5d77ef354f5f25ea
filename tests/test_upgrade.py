"""Folders of older versions: ids hashed from the path as named (version 1) are rehashed
from the real path, so the rerun after an upgrade sends nothing again."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.report.status import read_status
from pipeline.sources.ids import ID_VERSION, stable_id
from tests.fakes import ScriptedServer
from tests.helpers import SAMPLES


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", *args, "--quiet"])
    return result.exit_code, result.output


def real_id(path: Path) -> str:
    return stable_id(os.path.realpath(path))


def as_version_1(out: Path, spelled: dict[str, str]) -> None:
    """Give a folder the ids version 1 wrote: the hash of each source as the user spelled
    it (`spelled`: absolute source -> spelling). Checked against the version before ids
    of the real path: `imgs/checkerboard.png` ran from /tmp/v1 got 63d50b92ac8a1484."""
    manifest = pq.read_table(out / ".caption/manifest.pq")
    mapping = {real: stable_id(spelled[src]) for real, src in _real_ids(manifest)}
    for path in [out / ".caption/manifest.pq", *out.glob("part-*.parquet")]:
        table = pq.read_table(path)
        ids = pa.array([mapping.get(i, i) for i in table["id"].to_pylist()], pa.string())
        table = table.set_column(0, table.schema.field(0), ids)
        pq.write_table(table, path)
    meta = json.loads((out / ".caption/run.json").read_text())
    del meta["ids"]
    (out / ".caption/run.json").write_text(json.dumps(meta))


def _real_ids(manifest: pa.Table) -> list[tuple[str, str]]:
    return list(zip(manifest["id"].to_pylist(), manifest["source"].to_pylist(), strict=True))


def test_version_1_spelling_matches_what_that_version_wrote() -> None:
    assert stable_id("imgs/checkerboard.png") == "63d50b92ac8a1484"


@pytest.fixture
def imgs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(SAMPLES, tmp_path / "imgs")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path / "imgs"


def _spellings(imgs: Path, prefix: str) -> dict[str, str]:
    return {str(p): prefix + p.relative_to(imgs).as_posix() for p in imgs.rglob("*") if p.is_file()}


def test_a_version_1_folder_is_rehashed_and_nothing_is_sent_again(
    imgs: Path, server: ScriptedServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = imgs.parent / "out"
    assert run_cli("imgs", "-o", str(out), "--endpoint", server.url)[0] == 0
    as_version_1(out, _spellings(imgs, "imgs/"))
    assert real_id(imgs / "sunset.jpg") not in pq.read_table(out)["id"].to_pylist()

    monkeypatch.chdir(imgs.parent / "sub")  # and named another way: the point of it
    code, output = run_cli("../imgs/", "-o", str(out), "--endpoint", server.url)
    assert code == 0, output
    assert server.count() == 6
    ids = pq.read_table(out)["id"].to_pylist()
    assert sorted(ids) == sorted(real_id(p) for p in imgs.rglob("*") if p.is_file())
    meta = json.loads((out / ".caption/run.json").read_text())
    assert meta["ids"] == {"from": "path", "version": ID_VERSION}
    status = read_status(out)
    assert (status.manifest_rows, status.ok) == (6, 6)


def test_rows_paid_twice_under_two_spellings_become_one(
    imgs: Path, server: ScriptedServer, key: str
) -> None:
    """Version 1 sent `imgs` and `$PWD/imgs` twice; the upgrade keeps one row per file."""
    out = imgs.parent / "out"
    assert run_cli("imgs", "-o", str(out), "--endpoint", server.url)[0] == 0
    as_version_1(out, _spellings(imgs, "imgs/"))
    shard = next(out.glob("part-*.parquet"))
    table = pq.read_table(shard)
    sources = pq.read_table(out / ".caption/manifest.pq")["source"].to_pylist()
    # The same files named by their absolute path: version 1 gave them other ids.
    absolute = pa.array([stable_id(s) for s in sources], pa.string())
    by_source = dict(
        zip(
            pq.read_table(out / ".caption/manifest.pq")["id"].to_pylist(),
            absolute.to_pylist(),
            strict=True,
        )
    )
    second = table.set_column(
        0, table.schema.field(0), pa.array([by_source[i] for i in table["id"].to_pylist()])
    )
    pq.write_table(second, out / "part-99999.parquet")
    manifest = pq.read_table(out / ".caption/manifest.pq")
    both = pa.concat_tables([manifest, manifest.set_column(0, manifest.schema.field(0), absolute)])
    pq.write_table(both, out / ".caption/manifest.pq")
    assert read_status(out).ok == 12  # the bug as users met it

    code, output = run_cli(str(imgs), "-o", str(out), "--endpoint", server.url)
    assert code == 0, output
    assert server.count() == 6
    results = pq.read_table(out)
    assert results.num_rows == 6
    assert pc.count_distinct(results["id"]).as_py() == 6
    status = read_status(out)
    assert (status.manifest_rows, status.ok) == (6, 6)


def test_user_ids_and_urls_are_left_as_they_are(
    tmp_path: Path, server: ScriptedServer, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(SAMPLES, tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.csv").write_text("image,key\nimgs/sunset.jpg,sun\nimgs/icon.gif,icon\n")
    out = tmp_path / "out"
    assert (
        run_cli("list.csv", "--id-column", "key", "-o", str(out), "--endpoint", server.url)[0] == 0
    )
    meta = json.loads((out / ".caption/run.json").read_text())
    del meta["ids"]
    (out / ".caption/run.json").write_text(json.dumps(meta))
    code, output = run_cli(
        "list.csv", "--id-column", "key", "-o", str(out), "--endpoint", server.url
    )
    assert code == 0, output
    assert server.count() == 2
    assert sorted(pq.read_table(out)["id"].to_pylist()) == ["icon", "sun"]


def test_a_rerun_with_ids_made_another_way_is_refused_by_name(
    imgs: Path, server: ScriptedServer, key: str
) -> None:
    out = imgs.parent / "out"
    assert run_cli("imgs", "-o", str(out), "--endpoint", server.url)[0] == 0
    code, output = run_cli("imgs", "--id-from", "content", "-o", str(out), "--endpoint", server.url)
    assert code == 2
    assert "ids are from path, and this run's would be from content" in output
    assert "rerun with --id-from path" in output
    assert server.count() == 6


def test_content_ids_send_identical_images_once_and_survive_a_move(
    imgs: Path, server: ScriptedServer, key: str
) -> None:
    shutil.copy(imgs / "sunset.jpg", imgs / "nested" / "sunset-again.jpg")
    out = imgs.parent / "out"
    code, output = run_cli("imgs", "--id-from", "content", "-o", str(out), "--endpoint", server.url)
    assert code == 0, output
    assert server.count() == 6
    assert "ingest dropped 1 duplicate" in output
    shutil.move(imgs, imgs.parent / "moved")
    code, output = run_cli(
        "moved", "--id-from", "content", "-o", str(out), "--endpoint", server.url
    )
    assert code == 0, output
    assert "(6 already done, 0 pending)" in output
    assert server.count() == 6


def test_the_estimate_counts_identical_images(imgs: Path) -> None:
    shutil.copy(imgs / "sunset.jpg", imgs / "sunset-again.jpg")
    result = CliRunner().invoke(cli, ["estimate", "imgs", "--id-from", "content", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["duplicates"] == 1
    assert report["models"][0]["images"] == 6
