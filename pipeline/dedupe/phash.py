"""Perceptual hashes for `--dedupe near`: what an image looks like, in 2 x 64 bits.

Each image is decoded small (JPEG in draft mode: libjpeg scales by 1/8 while decoding),
turned upright by its EXIF orientation, made grey, averaged down to 64 x 64, blurred and
averaged down to 10 x 10 cells. `across` has one bit per cell of the top-left 8 x 8 (is
the cell two to its right brighter?), `down` the same downwards: a difference hash
(dHash) in each direction. A resized, re-encoded or lightly cropped copy keeps nearly
every bit; another picture agrees on about half. `groups.py` indexes `across` and
confirms with `down`.

Comparing cells two apart, on a blurred thumbnail, rather than neighbours on a plain
one (the textbook dHash) did better in a side-by-side run (150 scenes x 4 near-copies,
`pipeline/testing/photos.py`): copies differed by at most 6 bits (median 1) against 7
(median 2), while distinct scenes stayed 14 or more apart with both.

Hashing runs in worker processes (one per core): decoding is CPU work that would hold the
GIL. Only Pillow (and `engine/resize.py`'s table of EXIF turns) is imported here, so
the workers start fast. Files are read by the
workers themselves; bucket objects are fetched by the caller's threads and handed over.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from PIL import Image, ImageFilter

from pipeline.engine.resize import UPRIGHT

THUMB = 64  # the grey thumbnail blurred before the cells are averaged
BLUR = 1.5  # Gaussian radius on it, in thumbnail pixels
CELLS = 10  # cells a side; bits compare cells GAP apart
GAP = 2
# Images per hand-off to a worker: large enough that the hand-off costs little.
CHUNK = 64

Hashes = tuple[int, int]


def image_hashes(data: bytes) -> Hashes | None:
    """(`across`, `down`) of an image's bytes, as unsigned 64-bit ints; None if the bytes
    are not an image Pillow reads (the run makes that row an error, as without dedupe)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            orientation = im.getexif().get(0x0112, 1)
            im.draft("L", (THUMB, THUMB))  # JPEG only; still >= that size
            thumb = im.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    cells = thumb.filter(ImageFilter.GaussianBlur(BLUR)).resize(
        (CELLS, CELLS), Image.Resampling.BOX
    )
    if orientation in UPRIGHT:
        cells = cells.transpose(UPRIGHT[orientation])
    px = cells.tobytes()
    across = down = 0
    for row in range(CELLS - GAP):
        for col in range(CELLS - GAP):
            here = px[row * CELLS + col]
            across = across << 1 | (px[row * CELLS + col + GAP] > here)
            down = down << 1 | (px[(row + GAP) * CELLS + col] > here)
    return across, down


def file_hashes(path: str) -> Hashes | None:
    """`image_hashes` of a local file; None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return image_hashes(f.read())
    except OSError:
        return None


def hash_sources(
    paths: Sequence[str],
    remote: Callable[[list[str]], list[bytes | None]] | None = None,
    workers: int | None = None,
) -> list[Hashes | None]:
    """The hashes of many images, in order, in worker processes. `remote` fetches the
    bytes of the paths it is given (bucket objects) when the caller marks them so: a
    path for which `is_remote(path)` is True is read by `remote`, in the caller's threads."""
    from pipeline.io.storage import is_remote  # the workers import only this module

    if not paths:
        return []
    workers = workers or min(len(paths) // CHUNK + 1, os.cpu_count() or 1)
    context = multiprocessing.get_context("forkserver")
    out: list[Hashes | None] = [None] * len(paths)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        local = [i for i, p in enumerate(paths) if not is_remote(p)]
        for i, found in zip(
            local, pool.map(file_hashes, [paths[i] for i in local], chunksize=CHUNK), strict=True
        ):
            out[i] = found
        far = [i for i, p in enumerate(paths) if is_remote(p)]
        if far and remote is not None:
            for start in range(0, len(far), CHUNK * 4):
                part = far[start : start + CHUNK * 4]
                datas = remote([paths[i] for i in part])
                readable = [(i, d) for i, d in zip(part, datas, strict=True) if d is not None]
                hashed = pool.map(image_hashes, [d for _, d in readable], chunksize=4)
                for (i, _), found in zip(readable, hashed, strict=True):
                    out[i] = found
    return out
