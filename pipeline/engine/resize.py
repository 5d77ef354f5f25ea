"""Send what the model sees: an image reduced to the size at which the model bills it.

A vision model scales every image down before it looks at it (gpt-4o at detail high:
into 2048x2048, then the short side to 768), so a 12 MP photo is billed as a
1024x768 one, and uploading the rest is bandwidth for nothing. With `resize = "model"`
the worker computes that size with the estimate's own rule (`images.billed_size`) and
this module produces it: decoded (JPEG in draft mode, which lets libjpeg scale by 1/2,
1/4 or 1/8 while decoding), resampled with Lanczos, turned upright by its EXIF
orientation, and encoded as JPEG at quality 90, or PNG where there is alpha.

It runs in worker processes (`ProcessPoolExecutor`, one per core): decoding a 12 MP JPEG
is CPU work that would hold the GIL. Only Pillow is imported here, so the workers start
fast. An image that is animated, already small enough, or that would not come out
smaller is sent byte for byte.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

JPEG_QUALITY = 90

# EXIF orientation -> the transpose that makes the image upright.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True, slots=True)
class Reduced:
    data: bytes
    mime: str


def reduce_image(data: bytes, size: tuple[int, int]) -> Reduced | None:
    """The image in `data` at `size` (width, height as stored, before orientation), or
    None to send it as it is (animated, unreadable, or not smaller once encoded)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if getattr(im, "n_frames", 1) > 1:
                return None  # an animation: frames would be lost
            orientation = im.getexif().get(0x0112, 1)
            if im.format == "JPEG":
                im.draft("RGB", size)  # decode at 1/2, 1/4 or 1/8 scale, still >= size
            alpha = im.mode in ("RGBA", "LA", "PA") or (
                im.mode == "P" and "transparency" in im.info
            )
            out = im.convert("RGBA" if alpha else "RGB").resize(size, Image.Resampling.LANCZOS)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if orientation in UPRIGHT:
        out = out.transpose(UPRIGHT[orientation])
    buf = io.BytesIO()
    if alpha:
        out.save(buf, "PNG")
        mime = "image/png"
    else:
        out.save(buf, "JPEG", quality=JPEG_QUALITY)
        mime = "image/jpeg"
    encoded = buf.getvalue()
    return Reduced(encoded, mime) if len(encoded) < len(data) else None
