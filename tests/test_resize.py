"""--resize model: each image sent at the size the model bills it at, for the same tokens."""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.config.imagerules import PatchRule, TileRule
from pipeline.cost.images import billed_size, image_tokens
from pipeline.engine.resize import reduce_image
from tests.fakes import ScriptedServer

RULES = [
    (TileRule(base=85, per_tile=170), None),
    (TileRule(base=85, per_tile=170), "high"),
    (TileRule(base=85, per_tile=170), "low"),
    (PatchRule(multiplier=1.62, budget=1536), None),
    (PatchRule(multiplier=1.2, budget=1536), None),
    (PatchRule(multiplier=1.0, budget=6144), None),
]
AWKWARD = [
    (4000, 3000), (3000, 4000), (12000, 500), (500, 12000), (2049, 2048), (2048, 769),
    (2049, 769), (1537, 1025), (769, 768), (768, 769), (1025, 1025), (1, 1), (1, 9000),
    (513, 513), (512, 512), (1280, 1248), (1281, 1249), (1254, 1254), (6000, 4000),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "detail"), RULES)
def test_the_billed_size_bills_the_same_tokens_and_is_never_larger(rule, detail) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    sizes = AWKWARD + [(rng.randint(1, 9000), rng.randint(1, 9000)) for _ in range(3000)]
    for w, h in sizes:
        tw, th = billed_size(rule, w, h, detail)
        assert tw <= w and th <= h, (w, h)  # noqa: PT018
        assert image_tokens(rule, tw, th, detail) == image_tokens(rule, w, h, detail), (w, h)


def test_gpt_4o_sees_a_12_mp_photo_as_1024_by_768() -> None:
    assert billed_size(TileRule(85, 170), 4000, 3000, "high") == (1024, 768)
    assert billed_size(TileRule(85, 170), 4000, 3000, "low") == (512, 384)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    grain = rng.standard_normal((height, width, 3), dtype=np.float32) * 6
    base = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def jpeg(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def test_reduce_turns_the_image_upright_and_keeps_alpha_as_png() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    reduced = reduce_image(jpeg(photo(1600, 1200), exif=exif), (1024, 768))
    assert reduced is not None
    assert reduced.mime == "image/jpeg"
    with Image.open(io.BytesIO(reduced.data)) as im:
        assert im.size == (768, 1024)
        assert im.getexif().get(0x0112) is None
    rgba = photo(2000, 1000).convert("RGBA")
    rgba.putalpha(128)
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    reduced = reduce_image(buf.getvalue(), (1000, 500))
    assert reduced is not None
    assert reduced.mime == "image/png"
    with Image.open(io.BytesIO(reduced.data)) as im:
        assert (im.size, im.mode) == ((1000, 500), "RGBA")


def test_reduce_leaves_animations_alone() -> None:
    frames = [photo(900, 900, seed).convert("P") for seed in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert reduce_image(buf.getvalue(), (450, 450)) is None


def sent_images(server: ScriptedServer) -> dict[str, bytes]:
    """What the server received, by the digest it saw: the image bytes of each request."""
    out = {}
    for seen in server.seen:
        url = next(
            part["image_url"]["url"]
            for m in seen.body["messages"]
            if isinstance(m["content"], list)
            for part in m["content"]
            if part["type"] == "image_url"
        )
        out[seen.digest] = base64.b64decode(url.split(",", 1)[1])
    return out


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real-sized photos (12 MP and more), made once: the tests only read them."""
    root = tmp_path_factory.mktemp("photos")
    (root / "camera.jpg").write_bytes(jpeg(photo(4000, 3000)))
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "portrait-exif.jpg").write_bytes(jpeg(photo(3000, 2000, 1), exif=exif))
    pano = photo(6000, 500, 2).convert("RGBA")
    pano.putalpha(200)
    pano.save(root / "pano-alpha.png")
    (root / "small.jpg").write_bytes(jpeg(photo(300, 200, 3)))
    frames = [photo(900, 900, seed).convert("P") for seed in range(2)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    return root


def run(photos: Path, out: Path, server: ScriptedServer, *extra: str) -> dict:
    args = ["run", str(photos), "-o", str(out), "--endpoint", server.url, "--quiet", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / ".caption/run.json").read_text())


@pytest.mark.parametrize("model", ["gpt:gpt-4o", "gpt:gpt-5.2"])
def test_resize_model_sends_fewer_bytes_for_the_same_tokens_image_by_image(
    tmp_path: Path, photos: Path, server: ScriptedServer, key: str, model: str
) -> None:
    import pyarrow.parquet as pq

    plain = run(photos, tmp_path / "plain", server, "--model", model)
    originals = sent_images(server)
    server.seen.clear()
    resized = run(photos, tmp_path / "resized", server, "--model", model, "--resize", "model")
    received = sent_images(server)

    def tokens(out: Path) -> dict[str, int]:
        rows = pq.read_table(out).to_pylist()
        return {Path(r["source"]).name: r["prompt_tokens"] for r in rows}

    assert tokens(tmp_path / "resized") == tokens(tmp_path / "plain")  # image by image
    # Patch models keep more pixels (up to 1536 patches of 32 px: 1.5 MP) than gpt-4o.
    fewer = 5 if model == "gpt:gpt-4o" else 2
    assert resized["runs"][-1]["bytes_sent"] * fewer < plain["runs"][-1]["bytes_sent"]
    assert resized["runs"][-1]["images_reduced"] == 3  # camera, portrait, panorama

    by_name = {p.name: p.read_bytes() for p in photos.iterdir()}
    rule = TileRule(85, 170) if model == "gpt:gpt-4o" else PatchRule(1.2, 1536)
    sizes = {}
    for data in received.values():
        with Image.open(io.BytesIO(data)) as im:
            sizes[im.size] = im.format
    # Small and animated images go byte for byte; the others at their billed size,
    # upright (the portrait's EXIF rotation applied) and PNG where there is alpha.
    assert set(originals) & set(received) == {
        d for d in originals if originals[d] in (by_name["small.jpg"], by_name["animated.gif"])
    }
    camera = billed_size(rule, 4000, 3000)
    portrait = billed_size(rule, 3000, 2000)
    pano = billed_size(rule, 6000, 500)
    assert sizes[camera] == "JPEG"
    assert sizes[(portrait[1], portrait[0])] == "JPEG"
    assert sizes[pano] == "PNG"


def test_estimate_shows_the_bytes_with_and_without_resizing(photos: Path) -> None:
    result = CliRunner().invoke(cli, ["estimate", str(photos), "--json"])
    assert result.exit_code == 0, result.output
    upload = json.loads(result.output)["upload_bytes"]
    files = sum(p.stat().st_size for p in photos.iterdir())
    assert upload["as_is"] >= files * 4 // 3
    assert upload["resize_model_about"] * 3 < upload["as_is"]
    assert upload["unknown_size_images"] == 0


def test_urls_are_passed_through_and_the_run_says_so(
    tmp_path: Path, server: ScriptedServer, key: str
) -> None:
    (tmp_path / "list.txt").write_text("https://example.com/a.jpg\n")
    args = ["run", str(tmp_path / "list.txt"), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, [*args, "--endpoint", server.url, "--resize", "model"])
    assert result.exit_code == 0, result.output
    part = server.seen[0].body["messages"][-1]["content"][1]
    assert part["image_url"]["url"] == "https://example.com/a.jpg"
    assert (
        "http(s) images are sent as URLs, not resized: --fetch-urls downloads them" in result.output
    )


def test_fetch_urls_downloads_and_resizes_them(
    tmp_path: Path, photos: Path, server: ScriptedServer, key: str
) -> None:
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(photos))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        (tmp_path / "list.txt").write_text(f"{base}/camera.jpg\n{base}/missing.jpg\n")
        args = ["run", str(tmp_path / "list.txt"), "-o", str(tmp_path / "out"), "--quiet"]
        args += ["--endpoint", server.url, "--resize", "model", "--fetch-urls"]
        result = CliRunner().invoke(cli, args)
    finally:
        httpd.shutdown()
    assert result.exit_code == 1, result.output  # the missing one is an error row
    (data,) = sent_images(server).values()
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (1024, 768)
