"""Edge-case images, generated: each (file name, writer, expected outcome)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(seed: int, w: int = 96, h: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * 255 // w), (y * 255 // h), rng.integers(0, 255, (h, w))], -1).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def _huge_png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h (a decompression-bomb-sized image) with one tiny IDAT."""
    def chunk(t: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def write_cases(folder: str | Path) -> dict[str, str | None]:
    """Write the cases; return {image_id: expected failure reason prefix, or None when it must decode}."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, str | None] = {}

    _photo(1).save(d / "ok_upper.JPG", quality=90)
    out["ok_upper"] = None
    _photo(2).convert("CMYK").save(d / "cmyk.jpg", quality=90)
    out["cmyk"] = None
    a16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(a16).save(d / "gray16.png")
    out["gray16"] = None
    rgba = _photo(3).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "alpha.png")
    out["alpha"] = None
    _photo(4).convert("L").save(d / "gray.webp")
    out["gray"] = None
    _photo(5).convert("P").save(d / "palette.gif")
    out["palette"] = None
    # EXIF orientation 6 (rotate 90 CW to view): stored 96x64 -> seen as 64x96
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(6).save(d / "rotated.jpg", exif=exif.tobytes(), quality=90)
    out["rotated"] = None

    (d / "empty.png").write_bytes(b"")
    out["empty"] = "empty file"
    buf = io.BytesIO()
    _photo(7, 256, 256).save(buf, "JPEG", quality=90)
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["truncated"] = "truncated"
    (d / "not_an_image.png").write_bytes(b"this is not a png at all" * 10)
    out["not_an_image"] = "undecodable"
    (d / "bomb.png").write_bytes(_huge_png_header(40000, 40000))
    out["bomb"] = "too large"
    return out
