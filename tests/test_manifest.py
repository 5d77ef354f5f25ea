from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UsageError
from pipeline.records import SIGNATURE
from pipeline.sources.ids import RowSpec, stable_id
from pipeline.sources.manifest import read_manifest, write_manifest
from tests.helpers import SAMPLES


def ingest(tmp_path: Path, *sources: str | Path, **kw: Any) -> tuple[list[dict], Any]:
    """The manifest's rows, without the file signature caption keeps for itself (its
    own test is below)."""
    out = tmp_path / "manifest.parquet"
    spec = kw.pop("spec", None) or RowSpec(**kw)
    summary = write_manifest([str(s) for s in sources], out, spec)
    rows = pq.read_table(out).to_pylist()
    return [{k: v for k, v in r.items() if k != SIGNATURE} for r in rows], summary


def test_local_files_carry_their_signature_and_urls_none(tmp_path: Path) -> None:
    """A local file's size and modification time, from its inode (never its bytes): a
    rerun that finds them changed captions the file again (`output/current.py`)."""
    image = tmp_path / "a.gif"
    shutil.copy(SAMPLES / "icon.gif", image)
    listing = tmp_path / "l.txt"
    listing.write_text(f"{image}\nhttps://example.com/b.png\n")
    out = tmp_path / "m.parquet"
    write_manifest([str(listing)], out)
    signed = {r["source"]: r[SIGNATURE] for r in pq.read_table(out).to_pylist()}
    info = image.stat()
    assert signed == {
        str(image): f"{info.st_size}:{info.st_mtime_ns}",
        "https://example.com/b.png": None,
    }
    assert all(SIGNATURE not in r.extra for r in read_manifest(out))  # not a row's own column


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder with images in nested folders, odd letter case, and non-images."""
    root = tmp_path / "imgs"
    (root / "b" / "deep").mkdir(parents=True)
    shutil.copy(SAMPLES / "sunset.jpg", root / "a.JPG")
    shutil.copy(SAMPLES / "icon.gif", root / "b" / "c.gif")
    shutil.copy(SAMPLES / "forest.webp", root / "b" / "deep" / "d.WebP")
    shutil.copy(SAMPLES / "checkerboard.png", root / "e.jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_is_recursive_sorted_and_case_insensitive(tmp_path: Path, tree: Path) -> None:
    rows, summary = ingest(tmp_path, tree)
    assert [Path(r["source"]).relative_to(tree).as_posix() for r in rows] == [
        "a.JPG",
        "e.jpeg",
        "b/c.gif",
        "b/deep/d.WebP",
    ]
    assert all(os.path.isabs(r["source"]) for r in rows)
    assert summary.rows == 4
    assert summary.duplicates == 0


def real_id(path: Path) -> str:
    return stable_id(os.path.realpath(path))


def test_id_is_the_hash_of_the_real_path(tmp_path: Path, tree: Path) -> None:
    rows, _ = ingest(tmp_path, tree)
    assert rows[0]["id"] == real_id(tree / "a.JPG")
    # Pinned: sha256 of the UTF-8 key, first 16 hex digits.
    assert stable_id("/data/imgs/a.JPG") == "085caea63a8cf328"


@pytest.mark.parametrize(
    ("spelling", "cwd"),
    [
        ("imgs", "."),
        ("imgs/", "."),
        ("./imgs", "."),
        ("imgs/../imgs", "."),
        (".", "imgs"),
        ("./", "imgs"),
        ("../../imgs", "imgs/b"),
        ("ABS", "."),
        ("ABS/", "imgs/b/deep"),
        ("linked/imgs", "."),  # a linked parent folder
        ("LINKED_ABS/imgs", "imgs"),
        ("imgs/*.*", "."),
        ("linked/imgs/**/*", "."),
    ],
)
def test_the_same_file_gets_the_same_id_however_it_is_named(
    tmp_path: Path, tree: Path, spelling: str, cwd: str
) -> None:
    (tmp_path / "linked").symlink_to(tmp_path)
    os.chdir(tmp_path / cwd)
    spelled = spelling.replace("LINKED_ABS", str(tmp_path / "linked")).replace("ABS", str(tree))
    rows, _ = ingest(tmp_path, spelled)
    by_name = {Path(r["source"]).name: r["id"] for r in rows}
    assert by_name["a.JPG"] == real_id(tree / "a.JPG")
    assert by_name["e.jpeg"] == real_id(tree / "e.jpeg")
    if "c.gif" in by_name:
        assert by_name["c.gif"] == real_id(tree / "b" / "c.gif")


def test_one_image_and_a_list_entry_name_the_file_with_the_folders_id(
    tmp_path: Path, tree: Path
) -> None:
    os.chdir(tree / "b")
    (tree / "b" / "list.txt").write_text("../a.JPG\n")
    (tmp_path / "list.csv").write_text(f"image\n{tree}/./a.JPG\n")
    ids = {
        ingest(tmp_path, source)[0][0]["id"]
        for source in ("../a.JPG", str(tree / "a.JPG"), "list.txt", str(tmp_path / "list.csv"))
    }
    assert ids == {real_id(tree / "a.JPG")}


def test_a_link_to_a_file_gets_the_id_of_the_file_it_names(tmp_path: Path, tree: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(SAMPLES / "sunset.jpg", outside / "x.jpg")
    (tree / "link.jpg").symlink_to(outside / "x.jpg")
    rows, _ = ingest(tmp_path, tree)
    linked = next(r for r in rows if r["source"].endswith("link.jpg"))
    assert linked["id"] == real_id(outside / "x.jpg")
    assert ingest(tmp_path, outside / "x.jpg")[0][0]["id"] == linked["id"]


def test_two_files_never_share_an_id(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        shutil.copy(SAMPLES / "sunset.jpg", tmp_path / name / "a.jpg")
    rows, summary = ingest(tmp_path, tmp_path / "one", tmp_path / "two")
    assert len({r["id"] for r in rows}) == 2
    assert summary.duplicates == 0


def test_content_ids_drop_identical_images_and_survive_a_move(tmp_path: Path, tree: Path) -> None:
    shutil.copy(tree / "a.JPG", tree / "b" / "copy-of-a.jpg")
    rows, summary = ingest(tmp_path, tree, spec=RowSpec(id_from="content"))
    assert summary.duplicates == 1
    assert [Path(r["source"]).name for r in rows] == ["a.JPG", "e.jpeg", "c.gif", "d.WebP"]
    digest = hashlib.sha256((tree / "a.JPG").read_bytes()).hexdigest()[:16]
    assert rows[0]["id"] == digest
    moved = tmp_path / "moved"
    shutil.copytree(tree, moved)
    again, _ = ingest(tmp_path, moved, spec=RowSpec(id_from="content"))
    assert [r["id"] for r in again] == [r["id"] for r in rows]


@pytest.mark.timeout(20)
def test_content_ids_never_open_a_fifo_and_keep_its_path_id(tmp_path: Path, tree: Path) -> None:
    os.mkfifo(tree / "pipe.png")
    rows, _ = ingest(tmp_path, tree, spec=RowSpec(id_from="content"))
    fifo = next(r for r in rows if r["source"].endswith("pipe.png"))
    assert fifo["id"] == real_id(tree / "pipe.png")


def test_content_ids_refuse_urls_by_name(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--id-from content .* https://x/1.png is a URL"):
        ingest(tmp_path, "https://x/1.png", spec=RowSpec(id_from="content"))


def test_glob(tmp_path: Path, tree: Path) -> None:
    rows, _ = ingest(tmp_path, f"{tree}/**/*.gif")
    assert [Path(r["source"]).name for r in rows] == ["c.gif"]


def test_glob_matching_no_images(tmp_path: Path, tree: Path) -> None:
    with pytest.raises(UsageError, match=r"the glob matched no image files \(1 file"):
        ingest(tmp_path, f"{tree}/*.txt")


def test_url_source(tmp_path: Path) -> None:
    rows, _ = ingest(tmp_path, "https://example.com/a.png")
    assert rows == [
        {"id": stable_id("https://example.com/a.png"), "source": "https://example.com/a.png"}
    ]


def test_txt_list_with_comments_relative_paths_and_urls(tmp_path: Path, tree: Path) -> None:
    lst = tree / "list.txt"
    lst.write_text("# my images\n\na.JPG\n  b/c.gif  \nhttps://x.org/1.jpg\n# end\n")
    os.chdir(tmp_path)
    rows, _ = ingest(tmp_path, "imgs/list.txt")
    assert [r["source"] for r in rows] == [
        str(tree / "a.JPG"),
        str(tree / "b/c.gif"),
        "https://x.org/1.jpg",
    ]
    # Same file reached through the folder or through the list: same id.
    assert rows[0]["id"] == real_id(tree / "a.JPG")


def test_csv_keeps_extra_columns_and_types(tmp_path: Path) -> None:
    lst = tmp_path / "list.csv"
    lst.write_text(
        "url,width,height,label\nhttps://x/1.png,640,480,cat\nhttps://x/2.png,800,600,dog\n"
    )
    rows, _ = ingest(tmp_path, lst)
    assert rows[0] == {
        "id": stable_id("https://x/1.png"),
        "source": "https://x/1.png",
        "width": 640,
        "height": 480,
        "label": "cat",
    }
    assert pq.read_schema(tmp_path / "manifest.parquet").field("width").type == pa.int64()


def test_tsv_with_named_column_and_id_column(tmp_path: Path) -> None:
    lst = tmp_path / "list.tsv"
    lst.write_text("my_id\tpic\tnote\nA-1\thttps://x/1.png\tfirst\nA-2\thttps://x/2.png\tsecond\n")
    rows, _ = ingest(tmp_path, lst, column="pic", id_column="my_id")
    assert [(r["id"], r["source"], r["note"]) for r in rows] == [
        ("A-1", "https://x/1.png", "first"),
        ("A-2", "https://x/2.png", "second"),
    ]


def test_jsonl(tmp_path: Path, tree: Path) -> None:
    lst = tree / "list.jsonl"
    lst.write_text('{"path": "a.JPG", "w": 1}\n\n{"path": "b/c.gif", "w": 2, "tag": "x"}\n')
    rows, _ = ingest(tmp_path, lst)
    # Columns missing from a row are null.
    assert [(Path(r["source"]).name, r["w"], r["tag"]) for r in rows[:2]] == [
        ("a.JPG", 1, None),
        ("c.gif", 2, "x"),
    ]


def test_parquet_list(tmp_path: Path) -> None:
    lst = tmp_path / "list.parquet"
    pq.write_table(
        pa.table({"image_url": ["https://x/1.png", "https://x/2.png"], "score": [0.5, 0.7]}), lst
    )
    rows, _ = ingest(tmp_path, lst)
    assert [(r["source"], r["score"]) for r in rows] == [
        ("https://x/1.png", 0.5),
        ("https://x/2.png", 0.7),
    ]


def test_duplicates_dropped_and_counted(tmp_path: Path, tree: Path) -> None:
    lst = tree / "list.txt"
    lst.write_text("a.JPG\na.JPG\nhttps://x/1.png\n")
    (tmp_path / "more.txt").write_text("https://x/1.png\n")
    os.chdir(tmp_path)
    rows, summary = ingest(tmp_path, "imgs", "imgs/list.txt", "more.txt")
    assert summary.rows == len(rows) == 5  # 4 images + 1 URL
    assert summary.duplicates == 3
    assert len({r["id"] for r in rows}) == 5
    assert "3 duplicate(s) dropped" in summary.line()


def test_sources_with_different_columns_merge(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("url,width\nhttps://x/1.png,10\n")
    (tmp_path / "b.jsonl").write_text('{"url": "https://x/2.png", "width": 2.5, "who": "me"}\n')
    rows, _ = ingest(tmp_path, tmp_path / "a.csv", tmp_path / "b.jsonl")
    assert [(r["width"], r["who"]) for r in rows] == [(10.0, None), (2.5, "me")]


def test_user_columns_cannot_shadow_ours(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("url,id,status\nhttps://x/1.png,7,new\n")
    rows, _ = ingest(tmp_path, tmp_path / "a.csv")
    assert rows[0]["input_id"] == 7
    assert rows[0]["input_status"] == "new"
    assert rows[0]["id"] == stable_id("https://x/1.png")


def test_read_manifest_streams_typed_rows(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("url,label\nhttps://x/1.png,cat\n")
    ingest(tmp_path, tmp_path / "a.csv")
    (row,) = list(read_manifest(tmp_path / "manifest.parquet"))
    assert (row.source, row.extra) == ("https://x/1.png", {"label": "cat"})


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, r"source '.*missing': no such file or folder"),
        (
            lambda d: (d / "l.csv").write_text("name\nx\n"),
            r"l\.csv: no image column; name one with --column",
        ),
        (
            lambda d: (d / "l.jsonl").write_text('{"url": "a"}\n{broken\n'),
            r"l\.jsonl:2: not valid JSON",
        ),
        (
            lambda d: (d / "l.parquet").write_bytes(b"PAR1 not really"),
            r"l\.parquet: not a readable Parquet file",
        ),
        (lambda d: (d / "l.txt").write_bytes(b"\xff\xfe\x00bad"), r"l\.txt: not UTF-8 text"),
        (
            lambda d: (d / "l.txt").write_text("ftp://host/a.png\n"),
            r"only local paths, http\(s\) URLs and s3:// or gs:// objects",
        ),
        (
            lambda d: (d / "l.csv").write_text('url,w\n"https://x/1.png,1\n'),
            r"l\.csv: malformed CSV",
        ),
        (lambda d: (d / "l.xml").write_text("<a/>"), r"unsupported file type \.xml"),
        (
            lambda d: (d / "l.jsonl").write_text('"a.png"\n'),
            r"l\.jsonl:1: each line must be a JSON object",
        ),
        (
            lambda d: (d / "l.csv").write_text('url\nhttps://x/1.png\n""\n'),
            r"l\.csv: row 2: column 'url' is empty",
        ),
    ],
)
def test_bad_sources_fail_clearly_and_leave_no_partial_manifest(
    tmp_path: Path, setup, message: str
) -> None:
    setup(tmp_path)
    target = next((p for p in tmp_path.iterdir() if p.name.startswith("l.")), tmp_path / "missing")
    out = tmp_path / "out" / "manifest.parquet"
    out.parent.mkdir()
    pq.write_table(pa.table({"id": ["keep"], "source": ["me"]}), out)
    with pytest.raises(UsageError, match=message) as info:
        write_manifest([str(SAMPLES), str(target)], out)
    assert "\n" not in str(info.value)
    # The previous manifest is untouched and no temporary files remain.
    assert pq.read_table(out).to_pylist() == [{"id": "keep", "source": "me"}]
    assert sorted(p.name for p in out.parent.iterdir()) == ["manifest.parquet"]


def test_missing_column_named_by_flag(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("url\nhttps://x/1.png\n")
    with pytest.raises(UsageError, match=r"l\.csv: no column 'pic' \(columns: url\)"):
        ingest(tmp_path, tmp_path / "l.csv", column="pic")
    with pytest.raises(UsageError, match=r"no id column 'key'"):
        ingest(tmp_path, tmp_path / "l.csv", id_column="key")


def test_json_reaches_lists(tmp_path: Path) -> None:
    (tmp_path / "l.jsonl").write_text(
        json.dumps({"url": "https://x/1.png", "tags": ["a", "b"]}) + "\n"
    )
    rows, _ = ingest(tmp_path, tmp_path / "l.jsonl")
    assert rows[0]["tags"] == ["a", "b"]


def test_a_file_name_that_is_not_utf8_is_kept_as_a_row_with_its_bytes(
    tmp_path: Path, tree: Path
) -> None:
    """One Latin-1 name must not abort the folder: the run makes it an error row."""
    shutil.copy(SAMPLES / "icon.gif", os.fsencode(tree) + b"/caf\xe9.gif")
    rows, summary = ingest(tmp_path, tree)
    assert summary.rows == 5
    (odd,) = [r for r in rows if "caf" in r["source"]]
    assert odd["source"] == "file://" + str(tree.resolve()) + "/caf%E9.gif"
    assert odd["id"] == stable_id(odd["source"])
    assert {Path(r["source"]).name for r in rows if r is not odd} == {
        "a.JPG",
        "c.gif",
        "d.WebP",
        "e.jpeg",
    }


@pytest.mark.timeout(20)
def test_link_loops_end_and_each_file_is_ingested_once(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    (root / "sub").mkdir(parents=True)
    shutil.copy(SAMPLES / "icon.gif", root / "a.gif")
    shutil.copy(SAMPLES / "forest.webp", root / "sub" / "b.webp")
    (root / "self").symlink_to(".")  # a self-loop
    (root / "sub" / "up").symlink_to("..")  # a loop through the parent
    for source in (root, f"{root}/**/*.gif", f"{root}/**/*.webp", f"{root}/**/*"):
        rows, summary = ingest(tmp_path, source)
        names = sorted(Path(r["source"]).name for r in rows)
        expected = {"gif": ["a.gif"], "webp": ["b.webp"]}.get(str(source)[-4:].lstrip("."))
        assert names == (expected or ["a.gif", "b.webp"]), source
        assert summary.links_skipped == 2
        assert "2 link(s) skipped" in summary.line()


def test_links_to_folders_are_followed_and_links_to_files_count_once(tmp_path: Path) -> None:
    root, other = tmp_path / "imgs", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    shutil.copy(SAMPLES / "icon.gif", root / "a.gif")
    shutil.copy(SAMPLES / "forest.webp", other / "b.webp")
    shutil.copy(SAMPLES / "sunset.jpg", other / "c.jpg")
    (root / "ext").symlink_to(other)  # a folder outside: followed
    (root / "z-alias.gif").symlink_to("a.gif")  # the same file again: skipped
    (root / "sunset.jpg").symlink_to(other / "c.jpg")  # same as ext/c.jpg: skipped
    (root / "gone.png").symlink_to(tmp_path / "nothing.png")  # broken: skipped
    rows, summary = ingest(tmp_path, root)
    assert sorted(r["source"].removeprefix(str(root) + "/") for r in rows) == [
        "a.gif",
        "ext/b.webp",
        "ext/c.jpg",
    ]
    assert summary.links_skipped == 3


def test_a_link_to_a_file_outside_the_walk_is_ingested(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "x.gif").symlink_to(SAMPLES / "icon.gif")
    rows, summary = ingest(tmp_path, root)
    assert [r["source"] for r in rows] == [str(root / "x.gif")]
    assert summary.links_skipped == 0


def test_a_glob_without_double_star_stays_at_its_depth(tmp_path: Path, tree: Path) -> None:
    rows, _ = ingest(tmp_path, f"{tree}/*/*.gif")
    assert [Path(r["source"]).relative_to(tree).as_posix() for r in rows] == ["b/c.gif"]
    rows, _ = ingest(tmp_path, f"{tree}/**/*.[gW]*")  # case-sensitive, like glob
    assert sorted(Path(r["source"]).relative_to(tree).as_posix() for r in rows) == [
        "b/c.gif",
        "b/deep/d.WebP",
    ]


def test_sources_without_images_are_refused_and_replace_nothing(tmp_path: Path) -> None:
    out = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"id": ["keep"], "source": ["me"]}), out)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("")
    for source in (tmp_path / "empty", tmp_path / "empty.txt"):
        with pytest.raises(UsageError, match=r"no images found in .*empty"):
            write_manifest([str(source)], out)
    assert pq.read_table(out).to_pylist() == [{"id": "keep", "source": "me"}]


def test_a_killed_ingest_leaves_nothing_the_next_one_does_not_remove(tmp_path: Path) -> None:
    out = tmp_path / "manifest.parquet"
    stale = tmp_path / ".manifest.parquet.ingest-abc123"
    stale.mkdir()
    (stale / "part-00000.parquet").write_bytes(b"half")
    (stale / ".lock").write_bytes(b"")
    write_manifest([str(SAMPLES)], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.parquet"]


def test_user_columns_never_replace_ours(tmp_path: Path) -> None:
    """A `source` column replaced the image path and a `key` column what the id was
    hashed from: `a.gif,flickr,zzz` was captioned as 'flickr' under the id of 'zzz'."""
    shutil.copy(SAMPLES / "icon.gif", tmp_path / "a.gif")
    (tmp_path / "l.csv").write_text(
        "image,source,key,id,status,caption,cost_usd,parsed,label\n"
        "a.gif,flickr,zzz,7,done,x,1.5,p,cat\n"
    )
    (row,), _ = ingest(tmp_path, tmp_path / "l.csv")
    assert row["source"] == str(tmp_path / "a.gif")
    assert row["id"] == stable_id(str(tmp_path / "a.gif"))
    assert {k: row[k] for k in row if k not in ("id", "source")} == {
        "input_source": "flickr",
        "key": "zzz",
        "input_id": 7,
        "input_status": "done",
        "input_caption": "x",
        "input_cost_usd": 1.5,
        "input_parsed": "p",  # a structured job's column
        "label": "cat",
    }
    # A user's own column still serves as the id when asked for.
    (row,), _ = ingest(tmp_path, tmp_path / "l.csv", id_column="key")
    assert (row["id"], row["source"]) == ("zzz", str(tmp_path / "a.gif"))
