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
