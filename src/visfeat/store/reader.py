"""The HDF5 feature store: one file per dataset x extractor; shards have the same format, so merge is concatenation.

Layout:
- `image_id` (N,) utf-8, unique; `image_path` (N,) relative to the dataset root; `image_hw` (N, 2) int32;
  `image_sha256` (N,) the hex sha256 of the image file's bytes (a tar member's bytes), "" where unknown
- fixed-size fields: (N, *shape); ragged fields: (M, *shape) rows + `{group}_offsets` (N+1,) int64
- `failed/image_id`, `failed/reason`, `failed/sha256`
- attributes: format, format_version, preset, extractor, config (JSON), fields (JSON), weights_sha256,
  visfeat_version, created (`SOURCE_DATE_EPOCH` when set: the reproducible-builds convention), and from an
  extraction its `signature` and `request` (extract.py). Datasets carry no HDF5 timestamps and rows are written
  in fixed blocks of WRITE_BLOCK images whatever the calls to `append`, so the same rows give the same bytes."""
# SPLIT FROM visfeat.store
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np

from visfeat.store.format import FORMAT, StoreError, specs_from_json
from visfeat.store.writer import Rows


def rows_of(ds: h5py.Dataset, a: int, b: int) -> np.ndarray:
    """`ds[a:b]`, an empty range without a read: HDF5 2.0.0 fails zero-element reads of a virtual dataset of 50 or
    more mappings ("unable to get selection bounds"; fixed upstream in HDFGroup/hdf5 pull request 6083)."""
    return ds[a:b] if b > a else np.empty((0, *ds.shape[1:]), ds.dtype)


class FeatureStore(Mapping):
    """Read access: `store[image_id]` or `store.row(i)` -> dict of numpy arrays for one image.

    The HDF5 handle is opened lazily and per process, so a store (or a Dataset holding one) is safe to hand to
    DataLoader workers. A virtual store (`merge: virtual`, virtual_merge.py) reads its fields from the shard
    files; each open checks they are all in place, since HDF5 would silently read fill values.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._index: dict[str, int] | None = None
        self._open: dict[str, h5py.Dataset] = {}  # datasets `row` reads, kept open per process
        self._window = None  # a virtual store's virtual_merge.ShardWindow
        h = self.h5
        if h.attrs.get("format") != FORMAT:
            raise StoreError(f"{path}: not a visfeat feature store (format={h.attrs.get('format')!r})")
        self.specs = specs_from_json(h.attrs["fields"])

    @property
    def h5(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            h = h5py.File(self.path, "r")
            self._open, self._window = {}, None
            if h.attrs.get("merge") is not None:
                from visfeat.store.format import is_virtual
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
        from visfeat.store.format import is_virtual

        return is_virtual(self.h5)

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.h5.attrs.items()}

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.h5.attrs["config"])

    @property
    def ids(self) -> list[str]:
        return [x.decode() if isinstance(x, bytes) else x for x in self.h5["image_id"].asstr()[:]]

    @property
    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.ids)}
        return self._index

    @property
    def failed(self) -> list[tuple[str, str]]:
        g = self.h5["failed"]
        return list(zip(g["image_id"].asstr()[:], g["reason"].asstr()[:]))

    def __len__(self) -> int:
        return self._dataset("image_id").shape[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __contains__(self, key: object) -> bool:
        return key in self.index

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
        out: dict[str, np.ndarray] = {"image_hw": ds("image_hw")[i]}
        offsets: dict[str, tuple[int, int]] = {}
        for s in self.specs:
            if s.ragged:
                if s.ragged not in offsets:
                    a, b = ds(f"{s.ragged}_offsets")[i : i + 2]
                    offsets[s.ragged] = (int(a), int(b))
                a, b = offsets[s.ragged]
                out[s.name] = rows_of(ds(s.name), a, b)
            else:
                out[s.name] = ds(s.name)[i]
        for s in self.specs:  # a grid whose H x W varies per image: rows + `{name}_hw`, returned as (H, W, C)
            if s.ragged and f"{s.name}_hw" in out:
                out[s.name] = out[s.name].reshape(*(int(v) for v in out[f"{s.name}_hw"]), *s.shape)
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
                off = h[f"{s.ragged}_offsets"][a : b + 1]
                spans[s.ragged] = (int(off[0]), int(off[-1]))
                counts[s.ragged] = np.diff(off)
            lo, hi = spans[s.ragged]
            fields[s.name] = rows_of(h[s.name], lo, hi)
        else:
            fields[s.name] = h[s.name][a:b]
    sha = [x.decode() for x in h["image_sha256"][a:b]] if "image_sha256" in h else [""] * (b - a)
    return Rows(list(h["image_id"].asstr()[a:b]), list(h["image_path"].asstr()[a:b]), h["image_hw"][a:b], fields,
                counts, sha)


def read_failures(store: FeatureStore) -> list[tuple[str, str, str]]:
    """(image id, reason, sha256 of the file or "") of every failure, in order."""
    g = store.h5["failed"]
    sha = [x.decode() for x in g["sha256"][()]] if "sha256" in g else [""] * len(g["image_id"])
    return list(zip(g["image_id"].asstr()[:], g["reason"].asstr()[:], sha))


def iter_rows(store: FeatureStore, chunk: int = 256) -> Iterator[tuple[list[str], list[str], np.ndarray, dict, dict]]:
    """Stream a store in row chunks: (ids, paths, hw, fields, ragged counts); memory bounded by `chunk`."""
    n = len(store)
    for a in range(0, n, chunk):
        r = read_rows(store, a, min(n, a + chunk))
        yield r.ids, r.paths, r.hw, r.fields, r.counts
