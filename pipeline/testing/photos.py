"""Synthetic photographs and near-copies of them, for the `--dedupe near` tests and bench.

A scene is a smooth field of colour (a few low-frequency waves per channel), a handful of
discs in other colours, and sensor noise: distinct scenes share no structure, as distinct
photos do not. A near-copy is what a scraped dataset holds: the same picture resized to
50-90%, re-encoded as JPEG at quality 60-95, cropped by up to 4 pixels a side and/or
shifted sideways by up to 4 pixels, in random combination.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def scene(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A distinct photo-like RGB image for each seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / h
    img = np.zeros((h, w, 3))
    for c in range(3):
        waves = rng.normal(size=(6, 3))
        img[..., c] = 128 + sum(20 * np.sin(2 * np.pi * (a * x + b * y) + p) for a, b, p in waves)
    for _ in range(int(rng.integers(3, 8))):
        cx, cy, r = rng.uniform(0, w / h), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def near_copy(image: Image.Image, seed: int) -> bytes:
    """A JPEG of `image` resized, cropped and/or shifted a little (at least one of them)."""
    rng = np.random.default_rng(seed)
    img = image.convert("RGB")
    for op in rng.permutation(["resize", "crop", "shift"])[: int(rng.integers(1, 4))]:
        w, h = img.size
        if op == "resize":
            f = rng.uniform(0.5, 0.9)
            img = img.resize((max(1, int(w * f)), max(1, int(h * f))), Image.Resampling.LANCZOS)
        elif op == "crop":
            left, top, right, bottom = (int(v) for v in rng.integers(0, 5, 4))
            img = img.crop((left, top, w - right, h - bottom))
        else:
            s = int(rng.integers(1, 5))
            a = np.asarray(img)
            img = Image.fromarray(np.concatenate([np.repeat(a[:, :1], s, axis=1), a[:, :-s]], 1))
    return jpeg(img, int(rng.integers(60, 96)))


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()
