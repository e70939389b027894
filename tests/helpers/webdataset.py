"""Webdataset tars for tests, written as img2dataset and webdataset write them."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path


def write_tar(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    """A tar of samples: key -> {extension: member bytes}, members in sample order as webdataset writes them."""
    with tarfile.open(path, "w") as t:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


def photo_tars(sample_dir: Path) -> dict[str, bytes]:
    """Two webdataset tars of JPEGs of the first four sample photos (two each), named as img2dataset names them:
    file name -> tar bytes (for an S3 bucket)."""
    from PIL import Image

    photos = sorted(p for p in Path(sample_dir).iterdir() if p.suffix in (".png", ".jpg"))[:4]
    out = {}
    for k in range(2):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for j, p in enumerate(photos[2 * k:2 * k + 2]):
                b = io.BytesIO()
                Image.open(p).convert("RGB").save(b, "JPEG", quality=90)
                info = tarfile.TarInfo(f"{k:05d}{j:04d}.jpg")
                info.size = len(b.getvalue())
                t.addfile(info, io.BytesIO(b.getvalue()))
        out[f"{k:05d}.tar"] = buf.getvalue()
    return out
