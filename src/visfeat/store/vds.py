"""The read side of a virtual store (`merge: virtual`, written by store/merge.py `merge_virtual`): its fields are
HDF5 virtual datasets over the shard stores, so reading it means finding those files, refusing the store when
they are gone or changed, and bounding how many HDF5 holds open.

How HDF5 (2.0 here, and 1.10 on) finds a source file whose name is relative, checked on this machine: first under
`HDF5_VDS_PREFIX` when that is set, then in the folder of the virtual file (as it was opened), then in the
current directory. Source names are written relative to the merged file's folder, so moving the whole results
folder keeps a store working. HDF5 returns the dataset's fill value, without an error, for a source it cannot
open (deleted, moved, or past `ulimit -n`), and would read a same-named file from the current directory; so
`check_sources`, run by `FeatureStore` each time it opens the file, refuses a store whose shard files are not
where (and as large as) they were at the merge, and float fields' fill value is NaN rather than a plausible 0."""
from __future__ import annotations

import os
import resource
import warnings

import h5py
import numpy as np

from visfeat.store.format import SOURCES_BYTES, SOURCES_IMAGES, SOURCES_PATH, StoreError


class ShardWindow:
    """When `FeatureStore.row` should close a virtual store's fields: HDF5 keeps every shard file a read touched
    open (a descriptor and memory each: bench/README.md, "merge.py") until the virtual dataset closes, and
    reopening one re-reads its mapping; so the fields stay open while reads stay within OPEN_SHARDS shard files,
    then close."""

    OPEN_SHARDS = 32

    def __init__(self, h: h5py.File):
        self.ends = np.cumsum(h[SOURCES_IMAGES][()])
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
    for rel, size in zip(h[SOURCES_PATH].asstr()[()], h[SOURCES_BYTES][()]):
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
