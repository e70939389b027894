"""The manifest every extraction job reads its shard from, and shard membership.

Membership is decided once, by the manifest job: a hash of the image id (`shard_index`), so adding images moves no
other image to another shard; a tar source's shards are runs of its tars. The parquet is sorted by shard (each
shard in the order its job reads it) and cut into row groups at shard boundaries, with the first row of every shard
in its key-value metadata, so one job reads only the row groups holding its own rows: its cost is set by its shard,
not by the dataset. The manifest job only lists (file names, list rows, tar names): per-image facts (sizes,
headers, tar members) are read by the shard jobs, which read the images anyway.

Rows: `image_id`, `path`, `shard` for image files; for a tar source one row per tar, `tar` (relative to the
source's tar root, the extraction's --root, so tars staged elsewhere resolve) and `shard`, plus `failures` (the
img2dataset parquet listing the tar's failed URLs, relative to the same root; "" for none) for a urls source."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from visfeat.sources.folder import DatasetError
from visfeat.sources.images import header_size

MANIFEST_COLUMNS = ["image_id", "path", "shard"]  # an image-file source's manifest
HEADER_COLUMNS = ["image_id", "path", "bytes", "width", "height"]  # build_manifest's per-image facts
HASH_BLOCK = 1 << 20  # ids hashed per block when a manifest is written
ROW_GROUP_ROWS = 1 << 16  # most rows in one row group: what a job reads beyond its own shard is bounded by it
META_SHARDS = b"visfeat.shards"  # the shard count the manifest was cut into
META_STARTS = b"visfeat.shard_starts"  # JSON list: the first row of each shard, then the row count
META_ROOT = b"visfeat.root"  # the root the manifest job was given, absolute (a reader without a root falls back)


def missing_ids(manifest) -> list[str]:
    return list(manifest.loc[manifest["bytes"] < 0, "image_id"])


def build_manifest(root: str | os.PathLike, pairs: list[tuple[str, str]], apply_exif: bool = True):
    """DataFrame image_id, path, bytes, width, height (from headers; -1 where the header is unreadable): the
    per-image facts of a list of files, for tools and checks; the workflow's manifest job only lists."""
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
    df = pd.DataFrame(rows, columns=HEADER_COLUMNS)
    return df.astype({"bytes": "int64", "width": "int32", "height": "int32"})


def shard_index(image_ids, shards: int) -> np.ndarray:
    """The shard of each image id: the first 8 bytes of its utf-8 blake2b digest, big-endian, mod `shards`. A hash,
    not a position in the sorted list, so adding or removing images moves no other image to another shard (an
    incremental rerun re-extracts only what changed); not Python's hash(), which is salted per process. The digests
    are joined and read as one big-endian uint64 array (no Python int per id)."""
    b2 = hashlib.blake2b
    digests = b"".join([b2(str(i).encode(), digest_size=8).digest() for i in image_ids])
    return (np.frombuffer(digests, ">u8") % np.uint64(shards)).astype(np.int64)


def _row_groups(starts: np.ndarray) -> list[int]:
    """Row group boundaries (first rows, then the row count): at shard boundaries, consecutive shards packed up to
    ROW_GROUP_ROWS rows, a larger shard cut in groups of that size; so a shard lies in as few groups as it can."""
    bounds, first = [0], 0
    for s in range(len(starts) - 1):
        begin, end = int(starts[s]), int(starts[s + 1])
        if end - first > ROW_GROUP_ROWS and begin > first:
            bounds.append(begin)
            first = begin
        while end - first > ROW_GROUP_ROWS:
            first += ROW_GROUP_ROWS
            bounds.append(first)
    total = int(starts[-1])
    if total > bounds[-1]:
        bounds.append(total)
    return bounds


def write_manifest(df, out: str | os.PathLike, shards: int | None = None, root: str | os.PathLike | None = None
                   ) -> None:
    """manifest.parquet of `df` (a pandas DataFrame or a pyarrow Table), sorted and indexed by shard; written whole
    under a temporary name and renamed (a killed job leaves no half file). Rows without a `shard` column are
    assigned by `shard_index` of their id into `shards` and sorted by id within a shard; rows with one keep their
    order within a shard (a tar source: tar order), `shards` defaulting to the largest shard + 1. `root`: recorded
    for readers given no root (the report)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    if "shard" in table.column_names:
        shard = table["shard"].to_numpy().astype(np.int64)
        shards = shards if shards is not None else int(shard.max()) + 1 if len(shard) else 1
        order = np.argsort(shard, kind="stable")
    else:
        if shards is None:
            raise DatasetError("write_manifest: give the shard count of a manifest without a `shard` column")
        ids = table["image_id"]  # hashed a block at a time: never a Python string per row for the whole table
        shard = np.concatenate([np.zeros(0, np.int64)] + [
            shard_index(ids.slice(k, HASH_BLOCK).to_pylist(), shards) for k in range(0, len(ids), HASH_BLOCK)])
        order = np.lexsort((_sort_keys(table["image_id"]), shard))
    if len(shard) and not 0 <= shard.min() <= shard.max() < shards:
        raise DatasetError(f"write_manifest: shard numbers outside 0..{shards - 1}")
    shard = shard[order]
    table = table.take(pa.array(order)).drop_columns([c for c in ("shard",) if c in table.column_names])
    table = table.append_column("shard", pa.array(shard, pa.int32())).combine_chunks()
    starts = np.searchsorted(shard, np.arange(shards + 1), side="left")
    meta = {**(table.schema.metadata or {}), META_SHARDS: str(shards).encode(),
            META_STARTS: json.dumps(starts.tolist()).encode()}
    if root is not None:  # a URL (object storage) as it is
        meta[META_ROOT] = (str(root) if "://" in str(root) else os.path.abspath(root)).encode()
    table = table.replace_schema_metadata(meta)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out) + ".tmp")
    bounds = _row_groups(starts)
    with pq.ParquetWriter(tmp, table.schema) as w:
        for a, b in zip(bounds, bounds[1:]):  # one write per group: a group never spans two writes
            w.write_table(table.slice(a, b - a), row_group_size=b - a)
    tmp.replace(out)


def _sort_keys(ids) -> np.ndarray:
    """Each id's rank in sorted order: pyarrow sorts strings by their utf-8 bytes, which is Python's code point
    order, the order `shard_of` gives."""
    import pyarrow.compute as pc

    ranks = np.empty(len(ids), np.int64)
    ranks[pc.sort_indices(ids).to_numpy()] = np.arange(len(ids))
    return ranks


def _meta(path: str | os.PathLike) -> dict[bytes, bytes]:
    import pyarrow.parquet as pq

    return pq.read_schema(path).metadata or {}


def manifest_shards(path: str | os.PathLike) -> int | None:
    """The shard count the manifest was cut into (its footer only); None for a manifest written before shards
    were recorded."""
    v = _meta(path).get(META_SHARDS)
    return None if v is None else int(v)


def manifest_root(path: str | os.PathLike) -> str | None:
    """The root the manifest job was given, as an absolute path; None when not recorded."""
    v = _meta(path).get(META_ROOT)
    return None if v is None else v.decode()


def per_image_rows(path: str | os.PathLike) -> bool:
    """Whether the manifest has a row per image (False: a tar source's manifest, one row per tar, whose image ids
    only the shard jobs and their stores know)."""
    import pyarrow.parquet as pq

    return "image_id" in pq.read_schema(path).names


def read_shard(path: str | os.PathLike, index: int, shards: int | None = None):
    """Shard `index`'s rows (a pandas DataFrame), in the order its job reads them, reading only the row groups that
    hold them. A manifest written before shards were recorded is read whole and cut by `shard_of` into `shards`
    (the job's count), so existing stores resume on the same items in the same order."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as pf:
        meta = pf.schema_arrow.metadata or {}
        if META_SHARDS not in meta:
            if shards is None:
                raise DatasetError(f"{path}: give the shard count (this manifest does not record one)")
            return shard_of(pf.read().to_pandas(), shards, index).reset_index(drop=True)
        recorded = int(meta[META_SHARDS])
        if shards is not None and shards != recorded:
            raise DatasetError(f"{path} is cut into {recorded} shards, not {shards}: rebuild the manifest")
        if not 0 <= index < recorded:
            raise DatasetError(f"shard index {index} out of range for {recorded} shards")
        starts = json.loads(meta[META_STARTS])
        begin, end = starts[index], starts[index + 1]
        groups, first, row = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row < end and row + n > begin:
                groups.append(g)
                first = row if first is None else first
            row += n
        if not groups:
            return pf.schema_arrow.empty_table().to_pandas()
        return pf.read_row_groups(groups).slice(begin - first, end - begin).to_pandas()


def shard_of(manifest, shards: int, index: int):
    """Shard `index` of `shards` of a manifest read whole (as manifests were before shards were recorded). A
    manifest with a `shard` column (a tar source) says it row by row, in manifest order (each tar read in order);
    any other manifest's shard holds the images whose id hashes to it (`shard_index`), sorted by image id:
    deterministic, balanced in expectation, and stable when images are added or removed (some shards are empty
    when there are few images)."""
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


def iter_shard_ids(path: str, shards: int) -> Iterator[list[str]]:
    """The manifest's image ids shard by shard (what the merge checks each shard store against), streamed once through the file in its order (sorted by shard:
    `write_manifest`), so the merge holds one batch and one shard of them. A manifest written before shards were
    recorded is read whole and cut as its jobs cut it."""
    import pyarrow.parquet as pq

    recorded = manifest_shards(path)
    if recorded is None:
        import pandas as pd

        df = pd.read_parquet(path)
        key = df["shard"] if "shard" in df.columns else shard_index(df["image_id"], shards)
        whole = {k: list(g) for k, g in df["image_id"].groupby(key)}
        yield from (whole.get(k, []) for k in range(shards))
        return
    k, part = 0, []
    for batch in pq.ParquetFile(path).iter_batches(columns=["image_id", "shard"]):
        ids, of = batch.column(0).to_pylist(), batch.column(1).to_numpy()
        cuts = [0, *(np.flatnonzero(np.diff(of)) + 1).tolist(), len(of)]
        for a, b in zip(cuts, cuts[1:]):
            while k < of[a]:
                yield part
                k, part = k + 1, []
            part.extend(ids[a:b])
    for _ in range(k, recorded):
        yield part
        part = []
