"""What an extraction runs over: `Item`s (an image file or a tar member, with its id, stored path and content
sha256), from a folder, a list file or a manifest's shard. The content hash is what an incremental rerun keys
reuse on (engine/reuse.py)."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only where a model runs: a rerun with nothing to extract never loads it
    pass


@dataclass(frozen=True)
class Item:
    image_id: str
    path: str  # as stored in `image_path`: relative to the dataset root
    abspath: str  # the image file, or the tar holding it
    offset: int = -1  # a tar member: where its data starts in `abspath` (-1: abspath is the image file)
    size: int = -1  # a tar member: its size in bytes
    error: str = ""  # why the manifest already knows this item fails (a sample without an image, a broken tar)
    sha256: str = ""  # hex sha256 of the image's bytes (with_hashes); "" = not known (never reused)


def default_image_id(relpath: str) -> str:
    return os.path.splitext(relpath.replace(os.sep, "/"))[0]


def read_list(list_file: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Item]:
    """Lines `path` or `image_id<TAB>path`; relative paths resolve against `root` (default: the list's folder)."""
    from visfeat.sources.folder import list_lines

    base = Path(root) if root is not None else Path(list_file).parent
    items, seen = [], {}
    for n, image_id, path in list_lines(list_file):
        if image_id is None:
            image_id = default_image_id(path)
        if image_id in seen:
            raise ValueError(f"{list_file}:{n}: image id {image_id!r} repeats line {seen[image_id]}")
        seen[image_id] = n
        abspath = path if os.path.isabs(path) else str(base / path)
        items.append(Item(image_id, path, abspath))
    return items


def manifest_items(manifest: str | os.PathLike, shards: int | None, index: int, root: str | os.PathLike
                   ) -> list[Item]:
    """Shard `index` of a manifest.parquet (manifest.read_shard: only its own rows are read; `shards`, the job's
    count, checks the manifest's), paths resolved against `root`: the items, in the order, that `read_list` gives
    for the same shard written as a list file (same resume signature). A tar source's shard is its tars' rows:
    the job scans those tars here (tars.scan_tar_rows), the samples in tar order."""
    from visfeat.sources.manifest import read_shard

    part = read_shard(manifest, index, shards)
    if "image_id" not in part.columns:  # a tar source: one row per tar, relative to the root
        from visfeat.sources.tars import scan_tar_rows

        part = scan_tar_rows(part, root)
    if "tar" in part.columns:  # webdataset: tar members read in place, in tar order (tars.scan_webdataset)
        return [Item(i, p, t, int(o), int(n), e) for i, p, t, o, n, e in
                zip(part["image_id"], part["path"], part["tar"], part["offset"], part["bytes"], part["error"])]
    base = Path(root)
    return [Item(i, p, p if os.path.isabs(p) else str(base / p)) for i, p in zip(part["image_id"], part["path"])]


def folder_items(folder: str | os.PathLike) -> list[Item]:
    from visfeat.sources.folder import scan_folder

    return [Item(i, p, str(Path(folder) / p)) for i, p in scan_folder(folder)]


def content_sha256(it: Item) -> str:
    """sha256 of the image's bytes: the file, or the tar member's bytes; "" for a known failure or an unreadable
    file (its extraction records why)."""
    if it.error:
        return ""
    h = hashlib.sha256()
    try:
        with open(it.abspath, "rb") as f:
            if it.offset >= 0:
                f.seek(it.offset)
                data = f.read(it.size)
                if len(data) != it.size:
                    return ""  # the member is cut short: extraction says so
                h.update(data)
            else:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    except OSError:
        return ""
    return h.hexdigest()


def with_hashes(items: list[Item], threads: int = 8) -> list[Item]:
    """The items with their content sha256 filled in (hashlib releases the GIL: a few threads read in parallel)."""
    todo = [k for k, it in enumerate(items) if not it.sha256 and not it.error]
    if not todo:
        return items
    with ThreadPoolExecutor(max_workers=threads) as pool:
        digests = list(pool.map(lambda k: content_sha256(items[k]), todo, chunksize=64))
    out = list(items)
    for k, d in zip(todo, digests):
        out[k] = replace(items[k], sha256=d)
    return out
