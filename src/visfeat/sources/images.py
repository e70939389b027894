"""Image decoding that never kills a shard.

Every decode goes through `load_image`, which either returns an 8-bit RGB PIL image (EXIF orientation applied
unless asked not to) or raises `ImageError` with a short reason that the extraction records per image.
With `needed` (preset option `decode: draft`), a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
is still at least the size the preset's resize needs; the image then stands for its full size (`full_size`).
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Callable

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

# `info` key of a draft-decoded image: the oriented (width, height) of the full image it stands for.
FULL_SIZE = "visfeat_full_size"

# What a preset's resize needs of an image: oriented (w, h) -> the (w, h) it resizes that image to.
Needed = Callable[[int, int], tuple[int, int]]


class ImageError(Exception):
    """An image that cannot be used; str(err) is the reason recorded in `failed/reason`."""


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def header_size(path: str | os.PathLike, apply_exif: bool = True) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels; oriented like `load_image` returns it."""
    with Image.open(path) as im:
        w, h = im.size
        if apply_exif and _transposed(im):
            w, h = h, w
    return int(w), int(h)


def full_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the image `image` stands for: its own size, unless it was draft-decoded smaller."""
    return tuple(image.info.get(FULL_SIZE, image.size))


def _transposed(im: Image.Image) -> bool:
    """Whether the EXIF orientation swaps width and height."""
    try:
        return im.getexif().get(0x0112, 1) in _TRANSPOSING_ORIENTATIONS
    except Exception:  # broken EXIF blocks are common; they never make the size wrong
        return False


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
    path: str | os.PathLike, apply_exif: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
    needed: Needed | None = None,
) -> Image.Image:
    """Decode `path` to 8-bit RGB, or raise ImageError with the reason. `needed`: draft-decode a JPEG (above)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from None
    return _decode(p, size, apply_exif, max_pixels, needed=needed)


def load_tar_member(
    tar: str | os.PathLike, offset: int, size: int, apply_exif: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
    needed: Needed | None = None,
) -> Image.Image:
    """Decode the image stored at byte `offset` (`size` bytes) of an uncompressed tar, as `load_image` does a
    file: one seek and one read, nothing unpacked. A tar that ends inside the member is a truncated image."""
    try:
        with open(tar, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as e:
        raise ImageError(f"unreadable tar: {e.strerror or e}") from None
    if len(data) < size:
        raise ImageError(f"truncated tar: it ends {size - len(data)} bytes short of this {size}-byte member")
    return _decode(io.BytesIO(data), size, apply_exif, max_pixels, name=f"{os.path.basename(tar)}@{offset}",
                   needed=needed)


def load_bytes(data: bytes, name: str, apply_exif: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image held in memory as `load_image` does a file; `name` is what a reason calls it."""
    return _decode(io.BytesIO(data), len(data), apply_exif, max_pixels, name=name)


def _draft(im: Image.Image, apply_exif: bool, needed: Needed) -> tuple[int, int] | None:
    """Set a JPEG's decoder to the smallest DCT scale still at least `needed` (asked in oriented sizes, the
    stored image may be transposed); returns the oriented full size when it scales, else None."""
    w, h = im.size
    swap = apply_exif and _transposed(im)
    nw, nh = needed(h, w) if swap else needed(w, h)
    if swap:
        nw, nh = nh, nw
    if min(w // max(1, nw), h // max(1, nh)) < 2:  # no smaller scale is large enough: decode as `pil` does
        return None
    im.draft("RGB", (nw, nh))
    return (h, w) if swap else (w, h)


def _decode(source: Path | io.BytesIO, size: int, apply_exif: bool, max_pixels: int, name: str = "",
            needed: Needed | None = None) -> Image.Image:
    """`name`: what a reason calls an in-memory source (PIL would print the object's address)."""
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(source)
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageError(f"invalid size {w}x{h}")
            if w * h > max_pixels:
                raise ImageError(f"too large: {w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
            full = _draft(im, apply_exif, needed) if needed is not None and im.format == "JPEG" else None
            im.load()
            if apply_exif:
                im = ImageOps.exif_transpose(im)
            im = _to_rgb8(im)
            if full is not None:
                im.info[FULL_SIZE] = full
            return im
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"too large: {e}") from None
    except OSError as e:
        msg = str(e).replace(repr(source), repr(name)) if name else str(e)
        msg = msg or type(e).__name__
        if "truncated" in msg:
            raise ImageError(f"truncated: {msg}") from None
        raise ImageError(f"undecodable: {msg}") from None
    except Exception as e:  # any decoder bug is one image's problem, never the shard's
        raise ImageError(f"undecodable: {type(e).__name__}: {e}") from None
