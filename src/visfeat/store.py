"""The HDF5 feature store: one file per dataset x extractor; shards have the same format, so merge is concatenation.

Layout:
- `image_id` (N,) utf-8, unique; `image_path` (N,) relative to the dataset root; `image_hw` (N, 2) int32
- fixed-size fields: (N, *shape); ragged fields: (M, *shape) rows + `{group}_offsets` (N+1,) int64
- `failed/image_id`, `failed/reason`
- attributes: format, format_version, preset, extractor, config (JSON), fields (JSON), weights_sha256,
  visfeat_version, created. Datasets carry no HDF5 timestamps, so identical inputs give identical files
  (the `created` attribute aside).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .fields import FieldSpec

FORMAT = "visfeat-features"
FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")


class StoreError(ValueError):
    pass


def specs_to_json(specs: list[FieldSpec]) -> str:
    return json.dumps([asdict(s) for s in specs])


def specs_from_json(text: str) -> list[FieldSpec]:
    return [FieldSpec(d["name"], tuple(d["shape"]), d["dtype"], d["ragged"]) for d in json.loads(text)]


def _chunk_rows(shape: tuple[int, ...], itemsize: int, target: int = 1 << 20) -> int:
    row = max(1, int(np.prod(shape, dtype=np.int64)) * itemsize)
    return max(1, min(4096, target // row))


class StoreWriter:
    """Appends rows to a new store. Write to a temporary path and `os.replace` it when done (see `atomic_path`)."""

    def __init__(
        self,
        path: str | os.PathLike,
        specs: list[FieldSpec],
        attrs: dict[str, Any],
        storage_dtype: str = "float32",
        compression: str | None = None,
    ):
        self.specs = specs
        self.f = h5py.File(path, "w", track_order=False)
        comp = None if compression in (None, "none") else compression
        kw = {"track_times": False, "compression": comp}
        self.f.create_dataset("image_id", (0,), _STR, maxshape=(None,), chunks=(4096,), **kw)
        self.f.create_dataset("image_path", (0,), _STR, maxshape=(None,), chunks=(4096,), **kw)
        self.f.create_dataset("image_hw", (0, 2), np.int32, maxshape=(None, 2), chunks=(4096, 2), **kw)
        self.groups = sorted({s.ragged for s in specs if s.ragged})
        for g in self.groups:
            self.f.create_dataset(f"{g}_offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(4096,), **kw)
        for s in specs:
            dt = np.dtype(s.dtype)
            if dt.kind == "f" and storage_dtype == "float16":
                dt = np.dtype(np.float16)
            self.f.create_dataset(
                s.name, (0, *s.shape), dt, maxshape=(None, *s.shape),
                chunks=(_chunk_rows(s.shape, dt.itemsize), *s.shape), **kw,
            )
        fg = self.f.create_group("failed", track_order=False)
        fg.create_dataset("image_id", (0,), _STR, maxshape=(None,), chunks=(1024,), track_times=False)
        fg.create_dataset("reason", (0,), _STR, maxshape=(None,), chunks=(1024,), track_times=False)
        base = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fields": specs_to_json(specs),
            "storage_dtype": storage_dtype,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        for k, v in {**base, **attrs}.items():
            self.f.attrs[k] = v if v is not None else ""

    @staticmethod
    def _append(ds: h5py.Dataset, data: np.ndarray) -> None:
        n = ds.shape[0]
        if len(data) == 0:
            return
        ds.resize(n + len(data), axis=0)
        ds[n:] = data

    def append(self, ids: list[str], paths: list[str], hw: np.ndarray, fields: dict[str, np.ndarray],
               counts: dict[str, np.ndarray] | None = None) -> None:
        """Rows for len(ids) images. Fixed fields: (n, *shape); ragged: (sum(counts[group]), *shape)."""
        if not ids:
            return
        self._append(self.f["image_id"], np.asarray(ids, dtype=object))
        self._append(self.f["image_path"], np.asarray(paths, dtype=object))
        self._append(self.f["image_hw"], np.asarray(hw, np.int32).reshape(-1, 2))
        for g in self.groups:
            off = self.f[f"{g}_offsets"]
            c = np.asarray(counts[g], np.int64)
            self._append(off, off[-1] + np.cumsum(c))
        for s in self.specs:
            self._append(self.f[s.name], np.asarray(fields[s.name]).astype(self.f[s.name].dtype, copy=False))

    def add_failures(self, ids: list[str], reasons: list[str]) -> None:
        self._append(self.f["failed/image_id"], np.asarray(ids, dtype=object))
        self._append(self.f["failed/reason"], np.asarray(reasons, dtype=object))

    def close(self) -> None:
        self.f.close()


class FeatureStore(Mapping):
    """Read access: `store[image_id]` or `store.row(i)` -> dict of numpy arrays for one image.

    The HDF5 handle is opened lazily and per process, so a store (or a Dataset holding one) is safe to hand to
    DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._index: dict[str, int] | None = None
        h = self.h5
        if h.attrs.get("format") != FORMAT:
            raise StoreError(f"{path}: not a visfeat feature store (format={h.attrs.get('format')!r})")
        self.specs = specs_from_json(h.attrs["fields"])

    @property
    def h5(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

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
        return self.h5["image_id"].shape[0]

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
        h = self.h5
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        out: dict[str, np.ndarray] = {"image_hw": h["image_hw"][i]}
        offsets: dict[str, tuple[int, int]] = {}
        for s in self.specs:
            if s.ragged:
                if s.ragged not in offsets:
                    a, b = h[f"{s.ragged}_offsets"][i : i + 2]
                    offsets[s.ragged] = (int(a), int(b))
                a, b = offsets[s.ragged]
                out[s.name] = h[s.name][a:b]
            else:
                out[s.name] = h[s.name][i]
        for s in self.specs:  # a grid whose H x W varies per image: rows + `{name}_hw`, returned as (H, W, C)
            if s.ragged and f"{s.name}_hw" in out:
                out[s.name] = out[s.name].reshape(*(int(v) for v in out[f"{s.name}_hw"]), *s.shape)
        return out

    def close(self) -> None:
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
        self._h5 = self._pid = self._index = None


def iter_rows(store: FeatureStore, chunk: int = 256) -> Iterator[tuple[list[str], list[str], np.ndarray, dict, dict]]:
    """Stream a store in row chunks: (ids, paths, hw, fields, ragged counts); memory bounded by `chunk`."""
    h = store.h5
    n = len(store)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        ids = list(h["image_id"].asstr()[a:b])
        paths = list(h["image_path"].asstr()[a:b])
        hw = h["image_hw"][a:b]
        counts, fields, spans = {}, {}, {}
        for s in store.specs:
            if s.ragged:
                if s.ragged not in spans:
                    off = h[f"{s.ragged}_offsets"][a : b + 1]
                    spans[s.ragged] = (int(off[0]), int(off[-1]))
                    counts[s.ragged] = np.diff(off)
                lo, hi = spans[s.ragged]
                fields[s.name] = h[s.name][lo:hi]
            else:
                fields[s.name] = h[s.name][a:b]
        yield ids, paths, hw, fields, counts


def atomic_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(f".{p.name}.tmp-{os.getpid()}")


@contextmanager
def writing(out: str | os.PathLike, specs: list[FieldSpec], attrs: dict[str, Any], **kw) -> Iterator[StoreWriter]:
    """A StoreWriter on a temporary sibling of `out`, renamed to `out` only when the block completes: a store
    appears whole or not at all."""
    tmp = atomic_path(out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    w = StoreWriter(tmp, specs, attrs, **kw)
    try:
        yield w
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise


def _validate_rows(path: str, specs: list[FieldSpec], ids: list[str], fields: dict, seen: set[str]) -> None:
    """Every id once (`seen` accumulates), declared shapes, finite values."""
    for i in ids:
        if i in seen:
            raise StoreError(f"image id {i!r} appears more than once (in {path})")
        seen.add(i)
    for spec in specs:
        arr = fields[spec.name]
        if tuple(arr.shape[1:]) != tuple(spec.shape):
            raise StoreError(f"{path}: field {spec.name} has shape {arr.shape[1:]}, declared {spec.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            where = ""
            if not spec.ragged:
                row = int(np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(1))[0])
                where = f" (image {ids[row]!r})"
            raise StoreError(f"{path}: non-finite values in field {spec.name}{where}")


def merge(shards: list[str | os.PathLike], out: str | os.PathLike, expected_ids: list[str] | None = None,
          chunk: int = 256) -> dict[str, int]:
    """Concatenate shard stores into `out` (atomically), validating as it streams.

    Checks: same preset/config/weights/fields in every shard; every id once; finite values; declared shapes; and,
    given `expected_ids` (the manifest), every expected id present exactly once as a row or a failure.
    """
    if not shards:
        raise StoreError("no shards to merge")
    stores = [FeatureStore(s) for s in shards[:1]]
    first = stores[0].attrs
    keys = ("preset", "extractor", "config", "fields", "weights_sha256", "storage_dtype")
    for path in shards[1:]:
        s = FeatureStore(path)
        a = s.attrs
        s.close()  # reopened when streamed: one open file at a time, whatever the shard count (ulimit -n)
        stores.append(s)
        for k in keys:
            if a.get(k) != first.get(k):
                raise StoreError(f"{s.path}: attribute {k!r} differs from {stores[0].path}: cannot merge")
    specs = stores[0].specs
    attrs = {k: v for k, v in first.items() if k not in ("format", "format_version", "fields", "storage_dtype", "created")}
    seen: set[str] = set()
    n_rows = n_failed = 0
    try:
        with writing(out, specs, attrs, storage_dtype=first.get("storage_dtype", "float32"),
                     compression=first.get("compression") or None) as w:
            for s in stores:
                for ids, paths, hw, fields, counts in iter_rows(s, chunk):
                    _validate_rows(s.path, specs, ids, fields, seen)
                    w.append(ids, paths, hw, fields, counts)
                    n_rows += len(ids)
                failed = s.failed
                for i, _ in failed:
                    if i in seen:
                        raise StoreError(f"image id {i!r} is both extracted and failed, or failed twice (in {s.path})")
                    seen.add(i)
                w.add_failures([i for i, _ in failed], [r for _, r in failed])
                n_failed += len(failed)
                s.close()
            if expected_ids is not None:
                exp = set(expected_ids)
                missing = exp - seen
                extra = seen - exp
                if missing:
                    raise StoreError(f"{len(missing)} manifest ids missing from the shards, e.g. {sorted(missing)[:5]}")
                if extra:
                    raise StoreError(f"{len(extra)} ids not in the manifest, e.g. {sorted(extra)[:5]}")
    finally:
        for s in stores:
            s.close()
    return {"images": n_rows, "failed": n_failed}
