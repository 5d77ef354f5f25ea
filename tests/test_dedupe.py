"""`--dedupe near` (`pipeline/dedupe/`): images that look the same are sent once, the
others carry that answer; groups are found exactly and stay stable across nights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.dedupe.groups import components, near_pairs
from pipeline.dedupe.phash import image_hashes
from pipeline.dedupe.plan import leaders
from pipeline.testing.photos import jpeg, near_copy, scene
from tests.fakes import ScriptedServer, digest_of_file, json_error
from tests.helpers import by_name, results


def _hashes(n: int, copies: int, flips: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` random hash pairs, the last `copies` of them near-copies of earlier ones."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    c = rng.integers(0, 2**64, n, dtype=np.uint64)
    src = rng.integers(0, n - copies, copies)
    for arr in (h, c):
        bits = np.zeros(copies, dtype=np.uint64)
        for _ in range(flips):
            bits ^= np.uint64(1) << rng.integers(0, 64, copies).astype(np.uint64)
        arr[n - copies :] = arr[src] ^ bits
    return h, c


def _brute(h: np.ndarray, c: np.ndarray, distance: int) -> set[tuple[int, int]]:
    close = (np.bitwise_count(h[:, None] ^ h[None, :]) <= distance) & (
        np.bitwise_count(c[:, None] ^ c[None, :]) <= distance
    )
    return {(int(i), int(j)) for i, j in np.argwhere(np.triu(close, 1))}


@pytest.mark.parametrize(("distance", "flips"), [(0, 0), (3, 2), (8, 5), (12, 7)])
def test_near_pairs_finds_exactly_the_pairs_a_full_scan_finds(distance: int, flips: int) -> None:
    h, c = _hashes(2500, 400, flips, seed=distance)
    # Hashes close on one half only are not pairs: the other half must agree too.
    c[:50] = h[:50]
    c[50:100] = h[:50] ^ np.uint64(0xFFFF)
    expected = _brute(h, c, distance)
    assert len(expected) > 100
    found = {(int(i), int(j)) for i, j in near_pairs(h, c, distance)}
    assert found == expected
    # Asked for some rows only: exactly the pairs that touch them.
    asks = np.arange(2000, 2500)
    touched = {p for p in expected if p[0] >= 2000 or p[1] >= 2000}
    found = {tuple(sorted((int(i), int(j)))) for i, j in near_pairs(h, c, distance, asks)}
    assert found == touched


def test_components_name_each_group_by_its_first_row_and_leaders_prefer_answers() -> None:
    pairs = np.array([[1, 4], [4, 6], [2, 3], [7, 8]])
    labels = components(9, pairs)
    assert labels.tolist() == [0, 1, 2, 2, 1, 5, 1, 7, 7]
    answered = np.array([False, False, False, False, True, False, False, False, False])
    pending = ~answered
    pending[7] = False  # an error row not retried: it cannot lead
    lead = leaders(labels, answered, pending)
    # {1,4,6}: 4 is answered, so it leads; {2,3}: the first pending row; {7,8}: 8.
    assert lead.tolist() == [0, 4, 2, 2, 4, 5, 4, 7, 8]


def test_near_copies_hash_close_and_distinct_photos_far() -> None:
    def far(a: tuple[int, int] | None, b: tuple[int, int] | None) -> int:
        assert a is not None
        assert b is not None
        return max(bin(a[0] ^ b[0]).count("1"), bin(a[1] ^ b[1]).count("1"))

    photos = [scene(i) for i in range(12)]
    hashes = [image_hashes(jpeg(p)) for p in photos]
    distinct = [far(hashes[i], hashes[j]) for i in range(12) for j in range(i)]
    copies = [far(hashes[i], image_hashes(near_copy(p, i))) for i, p in enumerate(photos)]
    assert min(distinct) > 8 >= max(copies)
    assert image_hashes(b"not an image") is None


def _photos(root: Path, n: int, copies: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = scene(i)
        (root / f"p{i:02d}.jpg").write_bytes(jpeg(photo))
        for k in range(copies):
            (root / f"p{i:02d}_copy{k}.jpg").write_bytes(near_copy(photo, 100 * i + k))
    return root


def test_forty_photos_and_two_near_copies_each_send_forty_requests(
    tmp_path: Path, server: ScriptedServer, key: str, id_parts: str
) -> None:
    imgs = _photos(tmp_path / "imgs", 40, 2)
    out = tmp_path / "out"
    args = ["run", str(imgs), "-o", str(out), "--endpoint", server.url, "--dedupe", "near"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert server.count() == 40
    assert "80 carried a near-copy's answer, unsent" in result.output
    rows = by_name(results(out))
    assert len(rows) == 120
    assert all(r["status"] == "ok" for r in rows.values())
    for i in range(40):
        original = rows[f"p{i:02d}.jpg"]
        assert original["dedupe_of"] is None
        assert original["cost_usd"] > 0
        for k in range(2):
            copy = rows[f"p{i:02d}_copy{k}.jpg"]
            assert copy["dedupe_of"] == original["id"]  # its own original: no false merge
            assert copy["caption"] == original["caption"]
            assert (copy["cost_usd"], copy["prompt_tokens"], copy["attempts"]) == (0, 0, 0)
    status = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    assert (status["done"], status["pending"]) == (120, 0)
    paid = sum(r["cost_usd"] for r in rows.values())
    assert status["cost_usd"] == pytest.approx(paid)

    # The next night: a new near-copy of an image answered last night, and a new photo.
    (imgs / "p07_again.jpg").write_bytes(near_copy(scene(7), 999))
    (imgs / "new.jpg").write_bytes(jpeg(scene(1000)))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert server.count() == 41  # only the new photo
    rows = by_name(results(out))
    assert rows["p07_again.jpg"]["dedupe_of"] == rows["p07.jpg"]["id"]
    assert rows["p07_again.jpg"]["caption"] == rows["p07.jpg"]["caption"]
    assert rows["new.jpg"]["dedupe_of"] is None
    # And a third night with nothing new hashes nothing and sends nothing.
    result = CliRunner().invoke(cli, [*args, "-v"])
    assert server.count() == 41
    assert "hashed" not in result.output


def test_a_failed_leader_leaves_its_copies_pending_and_the_next_run_sends_one(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    imgs = _photos(tmp_path / "imgs", 2, 2)
    server.plan(digest_of_file(imgs / "p00.jpg"), json_error(400, "Invalid image"))
    out = tmp_path / "out"
    args = ["run", str(imgs), "-o", str(out), "--endpoint", server.url, "--dedupe", "near"]
    result = CliRunner().invoke(cli, args)
    assert server.count() == 2
    rows = by_name(results(out))
    assert rows["p00.jpg"]["status"] == "error"
    assert "p00_copy0.jpg" not in rows
    assert "p00_copy1.jpg" not in rows
    assert "2 pending" in result.output
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output  # the error row stays
    assert server.count() == 3  # the group's next image is sent in its place
    rows = by_name(results(out))
    assert rows["p00_copy1.jpg"]["dedupe_of"] == rows["p00_copy0.jpg"]["id"]
    assert rows["p00_copy0.jpg"]["status"] == "ok"


def test_the_estimate_and_the_dry_run_show_the_saving_and_send_nothing(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    imgs = _photos(tmp_path / "imgs", 5, 2)
    full = json.loads(CliRunner().invoke(cli, ["estimate", str(imgs), "--json"]).output)
    deduped = CliRunner().invoke(cli, ["estimate", str(imgs), "--dedupe", "near", "--json"])
    report = json.loads(deduped.output)
    assert report["dedupe"]["requests_saved"] == 10
    assert report["models"][0]["images"] == 5
    saved = report["dedupe"]["saved_expected_usd"]["gpt:gpt-4o"]
    whole = full["models"][0]["cost_expected_usd"]
    assert saved + report["models"][0]["cost_expected_usd"] == pytest.approx(whole)
    out = tmp_path / "out"
    dry = CliRunner().invoke(
        cli, ["run", str(imgs), "-o", str(out), "--dedupe", "near", "--dry-run"]
    )
    assert "10 fewer requests" in dry.output
    assert server.count() == 0
    assert not out.exists()
