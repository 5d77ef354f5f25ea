"""Local images: read and check them before anything is sent, and read sizes from headers.

The MIME type comes from the file's first bytes, never its name. Sizes come from the image
header (Pillow opens lazily and decodes no pixels).
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass

from pipeline.errors import RequestRejected

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


def header_size(data: bytes | io.BufferedIOBase) -> tuple[int, int] | None:
    """(width, height) from the image header, or None if Pillow cannot read one."""
    from PIL import Image, UnidentifiedImageError

    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with Image.open(stream) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def file_size(path: str) -> tuple[int, int] | None:
    """(width, height) of a local image file, reading only its header."""
    try:
        with open(path, "rb") as f:
            return header_size(f)
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class LoadedImage:
    url: str  # a data URL for local files, the URL itself for remote ones
    width: int | None
    height: int | None


def load_image(source: str, max_bytes: int, read_size: bool = False) -> LoadedImage:
    """Read a local image into a base64 data URL, byte for byte, or reject it with a reason.

    The type is checked from the leading bytes; the header is parsed for the pixel size
    only when `read_size` (token estimates need it; sending does not). A remote URL is
    passed through untouched (the endpoint fetches it).
    """
    if source.startswith(("http://", "https://")):
        return LoadedImage(url=source, width=None, height=None)
    try:
        size = os.stat(source).st_size
        if size == 0:
            raise RequestRejected(f"{source}: empty file")
        if size > max_bytes:
            raise RequestRejected(
                f"{source}: {size / 1e6:.1f} MB is over the {max_bytes / 1e6:g} MB cap "
                "([limits] max_image_mb)"
            )
        with open(source, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise RequestRejected(f"{source}: no such file") from None
    except IsADirectoryError:
        raise RequestRejected(f"{source}: is a folder, not an image") from None
    except OSError as exc:
        raise RequestRejected(f"{source}: cannot read ({exc.strerror})") from None
    mime = sniff_mime(data[:16])
    if mime is None:
        raise RequestRejected(f"{source}: not a PNG, JPEG, WEBP or GIF image")
    dims = header_size(data) if read_size else None
    if read_size and dims is None:
        raise RequestRejected(f"{source}: {mime} header is unreadable (corrupt image?)")
    encoded = base64.b64encode(data).decode("ascii")
    width, height = dims if dims else (None, None)
    return LoadedImage(url=f"data:{mime};base64,{encoded}", width=width, height=height)
