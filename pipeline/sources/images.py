"""Local images: read and check them before anything is sent, and read sizes from headers.

The MIME type comes from the file's first bytes, never its name. Sizes come from the image
header; no pixels are decoded.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from pipeline.errors import RequestRejected
from pipeline.io.storage import missing_or_forbidden, read_bytes

HEADER_BYTES = 64 * 1024

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
)


def sniff_mime(head: bytes) -> str | None:
    """The image type of these leading bytes, for the formats the endpoint accepts."""
    for magic, offset, mime in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}


def header_size(data: bytes, mime: str | None = None) -> tuple[int, int] | None:
    """(width, height) from the image header, or None if it cannot be read.

    The four accepted formats keep their size at fixed places in the header (a JPEG in its
    frame header, after any metadata segments), read here in well under a microsecond.
    Pillow, told the sniffed format, is the fallback for a header this does not follow.
    Sizes are the stored ones, like Pillow's `size`: EXIF orientation is not applied.
    """
    try:
        dims = _HEADER_READERS[mime](data) if mime in _HEADER_READERS else None
    except (struct.error, IndexError, ValueError):
        dims = None  # cut short: let Pillow have a look, then give up
    if dims is not None and dims[0] > 0 and dims[1] > 0:
        return dims
    return _pillow_size(data, mime)


def _png_size(data: bytes) -> tuple[int, int] | None:
    # Signature (8 bytes), then the IHDR chunk: length, b"IHDR", width, height.
    if data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return width, height


def _gif_size(data: bytes) -> tuple[int, int] | None:
    # b"GIF89a", then the logical screen's width and height, little-endian.
    width, height = struct.unpack_from("<HH", data, 6)
    return width, height


def _webp_size(data: bytes) -> tuple[int, int] | None:
    # RIFF header (12 bytes), then the first chunk's FourCC at 12 and its payload at 20.
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: after the frame tag
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14 bits each, minus one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24 bits each, minus one, after 4 bytes of flags
        return (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    return None


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2  # after SOI
    while True:
        pos = data.index(0xFF, pos)
        while data[pos] == 0xFF:  # a marker may be padded with fill bytes
            pos += 1
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9:  # EOI before any frame
            return None
        (length,) = struct.unpack_from(">H", data, pos)
        if marker in _JPEG_SOF:
            # length (2), sample precision (1), height (2), width (2)
            height, width = struct.unpack_from(">HH", data, pos + 3)
            return width, height
        pos += length


_HEADER_READERS = {
    "image/png": _png_size,
    "image/gif": _gif_size,
    "image/webp": _webp_size,
    "image/jpeg": _jpeg_size,
}


def _pillow_size(data: bytes, mime: str | None) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    formats = [_PIL_FORMATS[mime]] if mime in _PIL_FORMATS else None
    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """A URL passed through (`url`), or a local image ready to send (`mime`, `data`)."""

    width: int | None
    height: int | None
    url: str | None = None
    mime: str = ""
    data: bytes = b""  # the file's bytes, sent byte for byte (or reduced first)


# A local file whose name is not UTF-8 is kept in the manifest as a percent-encoded
# `file://` URI (see `manifest._not_utf8`); it becomes an error row.
NOT_UTF8_PREFIX = "file://"


def _read_checked(source: str, max_bytes: int, head_only: bool) -> bytes:
    """The file's bytes (or its first 64 KiB), or RequestRejected saying what is wrong.

    Opened without blocking and checked on the open descriptor: a FIFO named `x.png`
    would otherwise block `open` until a writer appears, which may be never.
    """
    if source.startswith(NOT_UTF8_PREFIX):
        name = unquote_to_bytes(source.removeprefix(NOT_UTF8_PREFIX))
        raise RequestRejected(
            f"{name!r}: the file name is not UTF-8; rename the file "
            "(e.g. convmv -f latin1 -t utf8) and run again"
        )
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RequestRejected(f"{source}: no such file") from None
    except OSError as exc:
        raise RequestRejected(f"{source}: cannot read ({exc.strerror})") from None
    try:
        _check_file(source, os.fstat(fd), max_bytes)
        f = open(fd, "rb")  # noqa: SIM115 (closed below; the descriptor is closed here on error)
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            return f.read(HEADER_BYTES) if head_only else f.read()
        except OSError as exc:
            raise RequestRejected(f"{source}: cannot read ({exc.strerror})") from None


def _fetched_checked(source: str, fetched: bytes | BaseException, max_bytes: int) -> bytes:
    """A bucket object's bytes, checked as a file's are."""
    if isinstance(fetched, BaseException):
        raise RequestRejected(missing_or_forbidden(source, fetched))
    if not fetched:
        raise RequestRejected(f"{source}: empty object")
    if len(fetched) > max_bytes:
        raise RequestRejected(
            f"{source}: over the {max_bytes / 1e6:g} MB cap ([limits] max_image_mb)"
        )
    return fetched


def _check_file(source: str, info: os.stat_result, max_bytes: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise RequestRejected(f"{source}: is a folder, not an image")
    if not stat.S_ISREG(info.st_mode):
        raise RequestRejected(f"{source}: not a regular file (a FIFO, socket or device)")
    if info.st_size == 0:
        raise RequestRejected(f"{source}: empty file")
    if info.st_size > max_bytes:
        raise RequestRejected(
            f"{source}: {info.st_size / 1e6:.1f} MB is over the {max_bytes / 1e6:g} MB cap "
            "([limits] max_image_mb)"
        )


def _checked_header(source: str, data: bytes) -> tuple[str, tuple[int, int]]:
    mime = sniff_mime(data[:16])
    if mime is None:
        raise RequestRejected(f"{source}: not a PNG, JPEG, WEBP or GIF image")
    dims = header_size(data, mime)
    if dims is None:
        raise RequestRejected(f"{source}: {mime} header is unreadable (corrupt image?)")
    return mime, dims


def local_size(source: str, max_bytes: int) -> tuple[int, int]:
    """(width, height) of a local image from its header, after the same checks as a run."""
    data = _read_checked(source, max_bytes, head_only=True)
    try:
        return _checked_header(source, data)[1]
    except RequestRejected:
        if len(data) < HEADER_BYTES:
            raise
        # A header beyond the first 64 KiB (a JPEG with a large EXIF block): read it all.
        return _checked_header(source, _read_checked(source, max_bytes, head_only=False))[1]


def object_size(source: str, head: bytes | BaseException, max_bytes: int) -> tuple[int, int]:
    """(width, height) of a bucket object from its first bytes (`head`), after the same
    checks as a run; the whole object only when its header lies beyond them."""
    data = _fetched_checked(source, head, max_bytes + HEADER_BYTES)
    try:
        return _checked_header(source, data)[1]
    except RequestRejected:
        if len(data) < HEADER_BYTES:
            raise
        return _checked_header(source, read_bytes(source, 0, max_bytes + 1))[1]


def load_image(
    source: str, max_bytes: int, fetched: bytes | BaseException | None = None
) -> LoadedImage:
    """Read a local image (sent byte for byte, or reduced), or reject it with a reason.
    A bucket object (or a URL downloaded with --fetch-urls) comes `fetched` already: its
    first `max_bytes + 1` bytes, or why it could not be read.

    The type comes from the leading bytes and the pixel size from the header (no pixels
    are decoded). A remote URL is passed through untouched: the endpoint fetches it.
    """
    if is_url(source) and fetched is None:
        return LoadedImage(width=None, height=None, url=source)
    data = (
        _fetched_checked(source, fetched, max_bytes)
        if fetched is not None
        else _read_checked(source, max_bytes, head_only=False)
    )
    mime, (width, height) = _checked_header(source, data)
    return LoadedImage(width=width, height=height, mime=mime, data=data)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))
