"""The manifest (one row per image: id, path, bytes, width, height) every extraction job reads its shard from,
and the shard membership: a hash of the image id, so adding images moves no other image to another shard."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from visfeat.sources.folder import DatasetError
from visfeat.sources.images import header_size

MANIFEST_COLUMNS = ["image_id", "path", "bytes", "width", "height"]


def missing_ids(manifest) -> list[str]:
    return list(manifest.loc[manifest["bytes"] < 0, "image_id"])


def build_manifest(root: str | os.PathLike, pairs: list[tuple[str, str]], apply_exif: bool = True):
    """DataFrame image_id, path, bytes, width, height (from headers; -1 where the header is unreadable)."""
    import pandas as pd

    rows = []
    for image_id, rel in pairs:
        p = Path(root) / rel
        try:
            size = p.stat().st_size
        except OSError:
            size = -1
        try:
            w, h = header_size(p, apply_exif)
        except Exception:  # unreadable header: extraction records the reason
            w = h = -1
        rows.append((image_id, rel, size, w, h))
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return df.astype({"bytes": "int64", "width": "int32", "height": "int32"})


def write_manifest(df, out: str | os.PathLike) -> None:
    """manifest.parquet, written whole under a temporary name and renamed (a killed job leaves no half file)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out) + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(out)


def shard_index(image_ids, shards: int) -> np.ndarray:
    """The shard of each image id: the first 8 bytes of its utf-8 blake2b digest, big-endian, mod `shards`. A hash,
    not a position in the sorted list, so adding or removing images moves no other image to another shard (an
    incremental rerun re-extracts only what changed); not Python's hash(), which is salted per process."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "big") % shards
                        for i in image_ids), np.int64, len(image_ids))


def shard_of(manifest, shards: int, index: int):
    """Shard `index` of `shards` of a manifest, as its rows. A manifest with a `shard` column (webdataset: one shard
    per tar, or per `tars_per_shard` tars) says it row by row, in manifest order (each tar read in order); any other
    manifest's shard holds the images whose id hashes to it (`shard_index`), sorted by image id: deterministic,
    balanced in expectation, and stable when images are added or removed (some shards are empty when there are
    few images)."""
    if not 0 <= index < shards:
        raise DatasetError(f"shard index {index} out of range for {shards} shards")
    if "shard" in manifest.columns:
        return manifest[manifest["shard"] == index]
    part = manifest[shard_index(manifest["image_id"], shards) == index]
    return part.sort_values("image_id", kind="stable")


def write_shard(manifest, shards: int, index: int, out_path: str | os.PathLike) -> int:
    """Shard `index` of `shards` (shard_of) as a list file: lines `image_id<TAB>path`, paths relative to the dataset
    root, which `visfeat extract --list` reads."""
    part = shard_of(manifest, shards, index)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out_path) + ".tmp")
    tmp.write_text("".join(f"{i}\t{p}\n" for i, p in zip(part["image_id"], part["path"])), encoding="utf-8")
    os.replace(tmp, out_path)
    return len(part)
