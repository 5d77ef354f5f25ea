from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipeline.errors import RequestRejected
from pipeline.sources.images import header_size, load_image, local_size, sniff_mime
from tests.helpers import SAMPLES


@pytest.mark.parametrize(
    ("name", "mime", "size"),
    [
        ("sunset.jpg", "image/jpeg", (640, 480)),
        ("checkerboard.png", "image/png", (1024, 1024)),
        ("forest.webp", "image/webp", (800, 600)),
        ("icon.gif", "image/gif", (64, 64)),
        ("nested/panorama.png", "image/png", (2048, 512)),
    ],
)
def test_type_from_bytes_and_size_from_header(name: str, mime: str, size: tuple[int, int]) -> None:
    data = (SAMPLES / name).read_bytes()
    assert sniff_mime(data[:16]) == mime
    assert header_size(data, mime) == size
    loaded = load_image(str(SAMPLES / name), max_bytes=10_000_000)
    assert (loaded.url, loaded.mime, loaded.data) == (None, mime, data)
    assert (loaded.width, loaded.height) == size


def test_exif_rotated_jpeg_reports_raw_dimensions(tmp_path: Path) -> None:
    """Sizes match Pillow's: the header's pixels, not the EXIF-rotated view."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (300, 100), (9, 9, 9)).save(path, exif=exif)
    assert local_size(str(path), 10_000_000) == (300, 100)


def test_urls_pass_through() -> None:
    loaded = load_image("https://example.com/a.jpg", max_bytes=1)
    assert loaded.url == "https://example.com/a.jpg"
    assert (loaded.data, loaded.width, loaded.height) == (b"", None, None)


def test_large_exif_block_beyond_first_64_kib(tmp_path: Path) -> None:
    """A JPEG whose frame header sits after a big metadata block is still measured."""
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (120, 80)).save(plain)
    data = plain.read_bytes()
    comment = b"\xff\xfe" + (60_000 + 2).to_bytes(2, "big") + b"x" * 60_000  # a COM segment
    path = tmp_path / "big_header.jpg"
    path.write_bytes(data[:2] + comment * 2 + data[2:])  # SOI, 120 kB of comments, the rest
    assert local_size(str(path), 10_000_000) == (120, 80)


def test_rejections_name_the_file_and_the_reason(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes((SAMPLES / "poster.jpg").read_bytes())
    with pytest.raises(RequestRejected, match=r"big\.png: 0\.1 MB is over the 0\.05 MB cap"):
        load_image(str(big), max_bytes=50_000)
    with pytest.raises(RequestRejected, match=r"is a folder, not an image"):
        load_image(str(tmp_path), max_bytes=50_000)


def _encodings() -> list[tuple[str, str, dict[str, object]]]:
    """(Pillow format, mode, save options): every header layout the readers handle."""
    return [
        ("PNG", "RGB", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "P", {}),
        ("GIF", "P", {}),
        ("WEBP", "RGB", {"lossless": False}),  # VP8
        ("WEBP", "RGB", {"lossless": True}),  # VP8L
        ("WEBP", "RGBA", {"lossless": False}),  # VP8X (alpha)
        ("WEBP", "RGB", {"exif": b"Exif\x00\x00II*\x00"}),  # VP8X (metadata)
        ("JPEG", "RGB", {}),
        ("JPEG", "L", {}),
        ("JPEG", "CMYK", {}),
        ("JPEG", "RGB", {"progressive": True}),
        ("JPEG", "RGB", {"exif": Image.Exif().tobytes(), "icc_profile": b"\x00" * 3000}),
    ]


@pytest.mark.parametrize(("fmt", "mode", "options"), _encodings())
def test_header_sizes_agree_with_pillow(
    tmp_path: Path, fmt: str, mode: str, options: dict[str, object]
) -> None:
    sizes = [(1, 1), (2, 3), (255, 256), (1023, 7), (3, 4097), (16383, 2), (640, 480)]
    if fmt in ("PNG", "JPEG"):
        sizes.append((65500, 1))  # past 16 bits for PNG's fields; JPEG's largest is 65535
    for size in sizes:
        path = tmp_path / f"{size[0]}x{size[1]}.{fmt.lower()}"
        Image.new(mode, size).save(path, fmt, **options)
        data = path.read_bytes()
        mime = sniff_mime(data[:16])
        with Image.open(path) as img:
            assert header_size(data, mime) == img.size == size, (fmt, options, size)


def test_cut_short_headers_are_unreadable_never_wrong() -> None:
    for name in ("sunset.jpg", "checkerboard.png", "forest.webp", "icon.gif"):
        data = (SAMPLES / name).read_bytes()
        mime = sniff_mime(data)
        full = header_size(data, mime)
        results = {header_size(data[:cut], mime) for cut in range(1, min(len(data), 4096))}
        assert results == {None, full}, name
