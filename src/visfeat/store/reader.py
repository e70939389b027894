"""Reads a store (`FeatureStore`, which is `visfeat.open`) and streams its rows for the merges and reruns
(`read_rows`, `read_failures`). Kept apart from the writer so readers (torch datasets, exporters, the report)
never import what writes."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np

from visfeat.store.format import (
    FAILED_ID,
    FAILED_REASON,
    FAILED_SHA256,
    FORMAT,
    IMAGE_HW,
    IMAGE_ID,
    IMAGE_PATH,
    IMAGE_SHA256,
    Attr,
    StoreError,
    decoded_attrs,
    hw_name,
    is_virtual,
    offsets_name,
    specs_from_json,
)
from visfeat.store.writer import Rows

FIND_ROWS = 1 << 20  # ids compared at a time by `FeatureStore.find` (~100 MB of ids)


def rows_of(ds: h5py.Dataset, a: int, b: int) -> np.ndarray:
    """`ds[a:b]`, an empty range without a read: HDF5 2.0.0 fails zero-element reads of a virtual dataset of 50 or
    more mappings ("unable to get selection bounds"; fixed upstream in HDFGroup/hdf5 pull request 6083)."""
    return ds[a:b] if b > a else np.empty((0, *ds.shape[1:]), ds.dtype)


class FeatureStore(Mapping):
    """Read access: `store[image_id]` or `store.row(i)` -> dict of numpy arrays for one image.

    The HDF5 handle is opened lazily and per process, so a store (or a Dataset holding one) is safe to hand to
    DataLoader workers. A virtual store (`merge: virtual`, store/vds.py) reads its fields from the shard
    files; each open checks they are all in place, since HDF5 would silently read fill values.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._index: dict[str, int] | None = None
        self._open: dict[str, h5py.Dataset] = {}  # datasets `row` reads, kept open per process
        self._window = None  # a virtual store's vds.ShardWindow
        h = self.h5
        if h.attrs.get(Attr.FORMAT) != FORMAT:
            raise StoreError(f"{path}: not a visfeat feature store (format={h.attrs.get(Attr.FORMAT)!r})")
        self.specs = specs_from_json(h.attrs[Attr.FIELDS])

    @property
    def h5(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            h = h5py.File(self.path, "r")
            self._open, self._window = {}, None
            if h.attrs.get(Attr.MERGE) is not None:
                from visfeat.store.vds import ShardWindow, check_sources

                if is_virtual(h):
                    try:
                        check_sources(h, self.path)
                    except BaseException:
                        h.close()
                        raise
                    self._window = ShardWindow(h)
            self._h5, self._pid = h, os.getpid()
        return self._h5

    def _dataset(self, name: str) -> h5py.Dataset:
        """`h5[name]`, opened once per process: opening a virtual dataset reads its whole mapping (O(shards))."""
        h = self.h5
        ds = self._open.get(name)
        if ds is None:
            ds = self._open[name] = h[name]
        return ds

    @property
    def virtual(self) -> bool:
        """Merged with `merge: virtual`: its fields are read from the shard files it names."""
        return is_virtual(self.h5)

    @property
    def attrs(self) -> dict[str, Any]:
        return decoded_attrs(self.h5)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.h5.attrs[Attr.CONFIG])

    @property
    def ids(self) -> list[str]:
        return [x.decode() if isinstance(x, bytes) else x for x in self.h5[IMAGE_ID].asstr()[:]]

    @property
    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.ids)}
        return self._index

    @property
    def failed(self) -> list[tuple[str, str]]:
        h = self.h5
        return list(zip(h[FAILED_ID].asstr()[:], h[FAILED_REASON].asstr()[:]))

    def __len__(self) -> int:
        return self._dataset(IMAGE_ID).shape[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def find(self, image_id: str) -> int | None:
        """The row of `image_id` (None: not in the store) for one lookup: a pass over the ids FIND_ROWS at a time,
        memory one chunk, where `index` holds every id (about 100 bytes each: 10 GB at 100M images); `index`,
        once built, answers instead (many lookups)."""
        if self._index is not None:
            return self._index.get(image_id)
        ds, key = self._dataset(IMAGE_ID), image_id.encode()
        for a in range(0, ds.shape[0], FIND_ROWS):
            hit = np.flatnonzero(ds[a:a + FIND_ROWS] == key)  # h5py reads utf-8 strings as bytes objects
            if hit.size:
                return a + int(hit[0])
        return None

    def __getitem__(self, image_id: str) -> dict[str, np.ndarray]:
        try:
            i = self.index[image_id]
        except KeyError:
            raise KeyError(f"{image_id!r} is not in {self.path}") from None
        return self.row(i)

    def row(self, i: int) -> dict[str, np.ndarray]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        i = i % n
        if self._window is not None and self._window.touch(i):
            self._open.clear()  # closing the virtual fields closes the shard files HDF5 held open for them
        ds = self._dataset
        out: dict[str, np.ndarray] = {IMAGE_HW: ds(IMAGE_HW)[i]}
        offsets: dict[str, tuple[int, int]] = {}
        for s in self.specs:
            if s.ragged:
                if s.ragged not in offsets:
                    a, b = ds(offsets_name(s.ragged))[i : i + 2]
                    offsets[s.ragged] = (int(a), int(b))
                a, b = offsets[s.ragged]
                out[s.name] = rows_of(ds(s.name), a, b)
            else:
                out[s.name] = ds(s.name)[i]
        for s in self.specs:  # a grid whose H x W varies per image: rows + `{name}_hw`, returned as (H, W, C)
            if s.ragged and hw_name(s.name) in out:
                out[s.name] = out[s.name].reshape(*(int(v) for v in out[hw_name(s.name)]), *s.shape)
        return out

    def close(self) -> None:
        self._open = {}
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        return {"path": self.path, "specs": self.specs}

    def __setstate__(self, state):
        self.path, self.specs = state["path"], state["specs"]
        self._h5 = self._pid = self._index = self._window = None
        self._open = {}


def read_rows(store: FeatureStore, a: int, b: int) -> Rows:
    """Rows a..b of a store (ragged fields as their rows); a store written before `image_sha256` gives "" digests."""
    h = store.h5
    counts, fields, spans = {}, {}, {}
    for s in store.specs:
        if s.ragged:
            if s.ragged not in spans:
                off = h[offsets_name(s.ragged)][a : b + 1]
                spans[s.ragged] = (int(off[0]), int(off[-1]))
                counts[s.ragged] = np.diff(off)
            lo, hi = spans[s.ragged]
            fields[s.name] = rows_of(h[s.name], lo, hi)
        else:
            fields[s.name] = h[s.name][a:b]
    return Rows(list(h[IMAGE_ID].asstr()[a:b]), list(h[IMAGE_PATH].asstr()[a:b]), h[IMAGE_HW][a:b], fields,
                counts, digests(h, IMAGE_SHA256, a, b))


def read_failures(store: FeatureStore) -> list[tuple[str, str, str]]:
    """(image id, reason, sha256 of the file or "") of every failure, in order."""
    h = store.h5
    ids = h[FAILED_ID]
    return list(zip(ids.asstr()[:], h[FAILED_REASON].asstr()[:], digests(h, FAILED_SHA256, 0, len(ids))))


def digests(h: h5py.File, name: str, a: int, b: int) -> list[str]:
    """Entries a..b of a sha256 column (IMAGE_SHA256 or FAILED_SHA256); all "" in a store written before it, so
    an incremental rerun re-extracts rather than trusts an unknown content."""
    return [x.decode() for x in h[name][a:b]] if name in h else [""] * (b - a)


def iter_rows(store: FeatureStore, chunk: int = 256) -> Iterator[tuple[list[str], list[str], np.ndarray, dict, dict]]:
    """Stream a store in row chunks: (ids, paths, hw, fields, ragged counts); memory bounded by `chunk`."""
    n = len(store)
    for a in range(0, n, chunk):
        r = read_rows(store, a, min(n, a + chunk))
        yield r.ids, r.paths, r.hw, r.fields, r.counts
