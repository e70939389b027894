"""Image decoding that never kills a shard.

Every decode goes through `load_image`, which either returns an 8-bit RGB PIL image (EXIF orientation applied
unless asked not to) or raises `ImageError` with a short reason that the extraction records per image.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# PIL's own bomb check warns at 89 Mpx and fails at 179 Mpx; we apply one explicit limit from the header instead,
# so the reason is recorded before any pixel is decoded.
DEFAULT_MAX_PIXELS = 178_956_970
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

# EXIF orientations that swap width and height (5-8 are the transposed ones).
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageError(Exception):
    """An image that cannot be used; str(err) is the reason recorded in `failed/reason`."""


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def header_size(path: str | os.PathLike, apply_exif: bool = True) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels; oriented like `load_image` returns it."""
    with Image.open(path) as im:
        w, h = im.size
        if apply_exif:
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # broken EXIF blocks are common; they never make the size wrong
                orientation = 1
            if orientation in _TRANSPOSING_ORIENTATIONS:
                w, h = h, w
    return int(w), int(h)


def _to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB. High bit depths are scaled, not clipped; alpha is dropped like PIL's convert."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        maxval = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a8 = np.clip(np.round(a * (255.0 / maxval)), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        a8 = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def load_image(
    path: str | os.PathLike, apply_exif: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode `path` to 8-bit RGB, or raise ImageError with the reason."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from None
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(p)
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageError(f"invalid size {w}x{h}")
            if w * h > max_pixels:
                raise ImageError(f"too large: {w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
            im.load()
            if apply_exif:
                im = ImageOps.exif_transpose(im)
            return _to_rgb8(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"too large: {e}") from None
    except OSError as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            raise ImageError(f"truncated: {msg}") from None
        raise ImageError(f"undecodable: {msg}") from None
    except Exception as e:  # any decoder bug is one image's problem, never the shard's
        raise ImageError(f"undecodable: {type(e).__name__}: {e}") from None
