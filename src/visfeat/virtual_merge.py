"""`merge: virtual`: a merged store whose feature fields are HDF5 virtual datasets over the shard stores.

The merged file copies only what grows with the image count (`image_id`, `image_path`, `image_hw`, every other
per-image dataset a shard has, the `failed/` group, the ragged `{group}_offsets` rebased) and maps each field of
the store's `fields` onto the shards' rows, so merging writes O(images) bytes instead of every feature again.
h5py reads a virtual dataset like any other, so every reader sees the store a copy merge writes.

How HDF5 (2.0 here, and 1.10 on) finds a source file whose name is relative, checked on this machine: first under
`HDF5_VDS_PREFIX` when that is set, then in the folder of the virtual file (as it was opened), then in the
current directory. Source names are written relative to the merged file's folder, so moving the whole results
folder keeps a store working. HDF5 returns the dataset's fill value, without an error, for a source it cannot
open (deleted, moved, or past `ulimit -n`), and would read a same-named file from the current directory; so
`check_sources`, run by `FeatureStore` each time it opens the file, refuses a store whose shard files are not
where (and as large as) they were at the merge, and float fields' fill value is NaN rather than a plausible 0.
"""
from __future__ import annotations

import os
import resource
import warnings
from pathlib import Path

import h5py
import numpy as np

from .store import (FORMAT_VERSION, StoreError, _validate_rows, atomic_path, check_expected, check_failures,
                    created_time, open_shards)

MODE_ATTR = "merge"  # attrs[MODE_ATTR] == "virtual" on a virtual store; absent on shards and copy-merged stores
SOURCES = "virtual_sources"  # group: per shard file `path` (relative to the store's folder), `bytes` (its size at
# the merge), `images` (its rows)
_STR = h5py.string_dtype("utf-8")


def is_virtual(h: h5py.File) -> bool:
    v = h.attrs.get(MODE_ATTR, "")
    return (v.decode() if isinstance(v, bytes) else v) == "virtual"


def _layout(h: h5py.File) -> dict[str, tuple[h5py.Dataset, np.dtype, tuple[int, ...]]]:
    """Every dataset of a store by its path (`image_id`, `failed/reason`, ...) with its dtype and shape."""
    names: list[str] = []
    h.visit(names.append)
    out = {}
    for name in sorted(names):
        obj = h[name]
        if isinstance(obj, h5py.Dataset):
            out[name] = (obj, obj.dtype, obj.shape)
    return out


class _Copied:
    """The datasets a virtual store copies, appended shard after shard in blocks of FLUSH_ROWS rows (HDF5 appends
    cost per call, memory per row)."""

    FLUSH_ROWS = 1 << 16

    def __init__(self, w: h5py.File, first: dict, skip: set[str], offsets: set[str]):
        self.w, self.parts, self.rows = w, {}, 0
        for name, (ds, dtype, shape) in first.items():
            if name not in skip:
                w.create_dataset(name, (1 if name in offsets else 0, *shape[1:]), dtype, maxshape=(None, *shape[1:]),
                                 chunks=ds.chunks or True, compression=ds.compression,
                                 compression_opts=ds.compression_opts, track_times=False)
                self.parts[name] = []

    def add(self, name: str, data: np.ndarray) -> None:
        self.parts[name].append(data)
        self.rows += len(data)
        if self.rows >= self.FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        for name, parts in self.parts.items():
            if parts:
                data = np.concatenate(parts)
                ds = self.w[name]
                n = ds.shape[0]
                ds.resize(n + len(data), axis=0)
                ds[n:] = data
                parts.clear()
        self.rows = 0


def merge_virtual(shards: list[str | os.PathLike], out: str | os.PathLike, expected_ids: list[str] | None = None,
                  chunk: int = 256) -> dict[str, int]:
    """Merge shard stores into `out` (atomically) as a virtual store; validated as `store.merge` validates (same
    extractor run, every id once, finite values, declared shapes, the manifest's ids exactly), streaming."""
    stores = open_shards(shards)
    specs = stores[0].specs
    fields = {s.name: s for s in specs}
    offsets = {f"{s.ragged}_offsets" for s in specs if s.ragged}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = os.path.abspath(out.parent)
    tmp = atomic_path(out)
    first = _layout(stores[0].h5)
    spans: dict[str, list[tuple[str, int]]] = {name: [] for name in fields}
    base = dict.fromkeys(offsets, 0)
    sources: list[tuple[str, int, int]] = []  # relative path, bytes, images
    seen: set[str] = set()
    n_rows = n_failed = 0
    try:
        with h5py.File(tmp, "w", track_order=False) as w:
            copied = _Copied(w, first, set(fields), offsets)
            for s in stores:
                have = _layout(s.h5)
                if have.keys() != first.keys():
                    raise StoreError(f"{s.path}: datasets {sorted(set(have) ^ set(first))} differ from "
                                     f"{stores[0].path}: cannot merge")
                for name, (_, dtype, shape) in have.items():
                    if dtype != first[name][1] or shape[1:] != first[name][2][1:]:
                        raise StoreError(f"{s.path}: {name} is {dtype} {shape[1:]}, {first[name][1]} "
                                         f"{first[name][2][1:]} in {stores[0].path}: cannot merge")
                data = {name: ds[()] for name, (ds, _, _) in have.items() if name not in fields}  # O(images)
                ids = [x.decode() for x in data["image_id"]]
                n = len(ids)
                offs = {name: data[name].astype(np.int64) for name in offsets}
                _validate_shard(s.path, specs, {name: have[name][0] for name in fields}, ids, offs, seen, chunk)
                failed = [x.decode() for x in data["failed/image_id"]]
                check_failures(s.path, failed, seen)
                rel = os.path.relpath(os.path.abspath(s.path), folder)
                for name, (_, _, shape) in have.items():
                    if name in fields:
                        spec = fields[name]
                        want = int(offs[f"{spec.ragged}_offsets"][-1]) if spec.ragged else n
                        if shape[0] != want:
                            raise StoreError(f"{s.path}: {name} has {shape[0]} rows, {want} expected")
                        spans[name].append((rel, shape[0]))
                    elif name in offsets:
                        off = offs[name]
                        if len(off) != n + 1 or off[0] != 0:
                            raise StoreError(f"{s.path}: {name} has {len(off)} entries from {off[0]}, "
                                             f"{n + 1} from 0 expected")
                        copied.add(name, off[1:] + base[name])
                        base[name] += int(off[-1])
                    else:
                        if "/" not in name and shape[0] != n:
                            raise StoreError(f"{s.path}: per-image dataset {name} has {shape[0]} rows, image_id {n}")
                        copied.add(name, data[name])
                sources.append((rel, os.path.getsize(s.path), n))
                n_rows += n
                n_failed += len(failed)
                s.close()
            copied.flush()
            check_expected(seen, expected_ids)
            for name in sorted(fields):
                _write_virtual(w, name, first[name][1], first[name][2][1:], spans[name])
            g = w.create_group(SOURCES, track_order=False)
            g.create_dataset("path", data=np.array([p for p, _, _ in sources], dtype=object), dtype=_STR,
                             track_times=False)
            g.create_dataset("bytes", data=np.array([b for _, b, _ in sources], np.int64), track_times=False)
            g.create_dataset("images", data=np.array([k for _, _, k in sources], np.int64), track_times=False)
            for k, v in stores[0].h5.attrs.items():
                w.attrs[k] = v
            w.attrs["format_version"] = FORMAT_VERSION
            w.attrs["created"] = created_time()
            w.attrs[MODE_ATTR] = "virtual"
            stores[0].close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for s in stores:
            s.close()
    return {"images": n_rows, "failed": n_failed}


def _validate_shard(path: str, specs: list, datasets: dict[str, h5py.Dataset], ids: list[str],
                    offsets: dict[str, np.ndarray], seen: set[str], chunk: int) -> None:
    """`store._validate_rows` over a shard's fields in row chunks (memory bounded by `chunk`)."""
    for a in range(0, len(ids), chunk):
        b = min(len(ids), a + chunk)
        values = {}
        for s in specs:
            if s.ragged:
                off = offsets[f"{s.ragged}_offsets"]
                values[s.name] = datasets[s.name][int(off[a]):int(off[b])]
            else:
                values[s.name] = datasets[s.name][a:b]
        _validate_rows(path, specs, ids[a:b], values, seen)


def _write_virtual(w: h5py.File, name: str, dtype: np.dtype, tail: tuple[int, ...],
                   spans: list[tuple[str, int]]) -> None:
    """One field as a virtual dataset: shard k's rows at their place in the merged order."""
    total = sum(r for _, r in spans)
    fill = np.nan if dtype.kind == "f" else 0
    if total == 0:  # nothing to map (every image failed): an ordinary empty dataset, as a copy merge writes
        w.create_dataset(name, (0, *tail), dtype, maxshape=(None, *tail), chunks=(1, *tail), track_times=False)
        return
    lay = h5py.VirtualLayout(shape=(total, *tail), dtype=dtype)
    at = 0
    for rel, rows in spans:
        if rows:
            lay[at:at + rows] = h5py.VirtualSource(rel, name, shape=(rows, *tail), dtype=dtype)
            at += rows
    w.create_virtual_dataset(name, lay, fillvalue=fill)


class ShardWindow:
    """When `FeatureStore.row` should close a virtual store's fields: HDF5 keeps every shard file a read touched
    open (a descriptor and about 0.5 MB each) until the virtual dataset closes, and reopening one re-reads its
    mapping; so the fields stay open while reads stay within OPEN_SHARDS shard files, then close."""

    OPEN_SHARDS = 32

    def __init__(self, h: h5py.File):
        self.ends = np.cumsum(h[f"{SOURCES}/images"][()])
        self.held: set[int] = set()

    def touch(self, row: int) -> bool:
        """Note that `row` is read; True: close the open fields first."""
        k = int(np.searchsorted(self.ends, row, side="right"))
        if k in self.held:
            return False
        full = len(self.held) >= self.OPEN_SHARDS
        if full:
            self.held.clear()
        self.held.add(k)
        return full


def source_files(h: h5py.File, path: str) -> list[tuple[str, str, int]]:
    """(relative name, the file HDF5 will read, its size at the merge) for each shard file of a virtual store."""
    folder = os.path.dirname(os.path.abspath(path))
    prefixes = [p.replace("${ORIGIN}", folder) for p in os.environ.get("HDF5_VDS_PREFIX", "").split(os.pathsep) if p]
    out = []
    for rel, size in zip(h[f"{SOURCES}/path"].asstr()[()], h[f"{SOURCES}/bytes"][()]):
        under = (c for c in (os.path.join(p, rel) for p in prefixes) if os.path.exists(c))
        where = next(under, os.path.join(folder, rel))
        out.append((rel, where, int(size)))
    return out


def describe_sources(h: h5py.File, path: str) -> str:
    """One line for `visfeat inspect`: what a virtual store reads from, and what is missing."""
    files = source_files(h, path)
    missing = [where for _, where, _ in files if not os.path.exists(where)]
    line = f"virtual: fields read from {len(files)} shard files ({len(missing)} missing"
    return line + (f", e.g. {missing[0]})" if missing else ")")


def check_sources(h: h5py.File, path: str) -> None:
    """Refuse a virtual store whose shard files are missing or changed since the merge (HDF5 would read fill
    values), and raise the open-file limit so reads spanning many shards can open them all."""
    files = source_files(h, path)
    missing = [where for _, where, _ in files if not os.path.exists(where)]
    if missing:
        raise StoreError(f"{path}: a virtual store (merge: virtual) reads its features from {len(files)} shard files; "
                         f"{len(missing)} missing, e.g. {missing[0]} (moved or deleted?). Put them back, move the "
                         "results folder only as a whole, or merge again")
    changed = [(where, size) for _, where, size in files if os.path.getsize(where) != size]
    if changed:
        where, size = changed[0]
        raise StoreError(f"{path}: shard file {where} has changed since this virtual store was merged "
                         f"({os.path.getsize(where)} bytes, {size} at the merge; {len(changed)} changed): merge again")
    _allow_open_files(len(files) + 256)


def _allow_open_files(n: int) -> None:
    """HDF5 holds one descriptor per source file a read touches; past the limit it returns fill values."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= n:
        return
    new = n if hard == resource.RLIM_INFINITY else min(hard, n)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, new), hard))
    if new < n:
        warnings.warn(f"ulimit -n {hard} is below the {n - 256} shard files of a virtual store: a single read "
                      "spanning more shards than that returns fill values (NaN); FeatureStore.row holds at most "
                      f"{ShardWindow.OPEN_SHARDS}, and streaming reads (`iter_rows`) one chunk's shards",
                      stacklevel=3)
