"""The HDF5 feature store: one file per dataset x extractor; shards have the same format, so merge is concatenation.

Layout:
- `image_id` (N,) utf-8, unique; `image_path` (N,) relative to the dataset root; `image_hw` (N, 2) int32;
  `image_sha256` (N,) the hex sha256 of the image file's bytes (a tar member's bytes), "" where unknown
- fixed-size fields: (N, *shape); ragged fields: (M, *shape) rows + `{group}_offsets` (N+1,) int64
- `failed/image_id`, `failed/reason`, `failed/sha256`
- attributes: format, format_version, preset, extractor, config (JSON), fields (JSON), weights_sha256,
  visfeat_version, created (`SOURCE_DATE_EPOCH` when set: the reproducible-builds convention), and from an
  extraction its `signature` and `request` (extract.py). Datasets carry no HDF5 timestamps and rows are written
  in fixed blocks of WRITE_BLOCK images whatever the calls to `append`, so the same rows give the same bytes.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from .fields import FieldSpec

FORMAT = "visfeat-features"
FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_SHA = h5py.string_dtype("ascii", 64)  # hex sha256, fixed length
WRITE_BLOCK = 256  # images per write: the file's bytes depend on the rows, not on how callers batch them


def created_time() -> str:
    """Now, or `SOURCE_DATE_EPOCH` (seconds since 1970, UTC) when set, so a rebuild can be compared byte for byte
    (https://reproducible-builds.org/specs/source-date-epoch/)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(int(epoch)))
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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
    """Appends rows to a new store. Write to a temporary path and `os.replace` it when done (see `atomic_path`).

    Rows are buffered and written WRITE_BLOCK images at a time and failures all at `close`, so the file's bytes
    depend only on the rows and failures in order, never on the sizes of the `append` calls (an incremental
    rerun that mixes reused and new rows writes the file a clean run writes)."""

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
        self.f.create_dataset("image_sha256", (0,), _SHA, maxshape=(None,), chunks=(4096,), **kw)
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
        fg.create_dataset("sha256", (0,), _SHA, maxshape=(None,), chunks=(1024,), track_times=False)
        base = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fields": specs_to_json(specs),
            "storage_dtype": storage_dtype,
            "created": created_time(),
        }
        for k, v in {**base, **attrs}.items():
            self.f.attrs[k] = v if v is not None else ""
        self._rows: list[Rows] = []  # appended, not yet written
        self._buffered = 0
        self._failed: tuple[list[str], list[str], list[str]] = ([], [], [])

    @staticmethod
    def _append(ds: h5py.Dataset, data: np.ndarray) -> None:
        n = ds.shape[0]
        if len(data) == 0:
            return
        ds.resize(n + len(data), axis=0)
        ds[n:] = data

    def append(self, ids: list[str], paths: list[str], hw: np.ndarray, fields: dict[str, np.ndarray],
               counts: dict[str, np.ndarray] | None = None, sha256: list[str] | None = None) -> None:
        """Rows for len(ids) images. Fixed fields: (n, *shape); ragged: (sum(counts[group]), *shape); `sha256`:
        each image file's hex digest (None: unknown)."""
        if not len(ids):
            return
        counts = {g: np.asarray((counts or {})[g], np.int64) for g in self.groups}
        self._rows.append(Rows(list(ids), list(paths), np.asarray(hw, np.int32).reshape(-1, 2), fields, counts,
                               list(sha256) if sha256 is not None else [""] * len(ids)))
        self._buffered += len(ids)
        while self._buffered >= WRITE_BLOCK:
            self._write_block(WRITE_BLOCK)

    def _write_block(self, n: int) -> None:
        rows = _concat(self._rows, self.specs) if len(self._rows) > 1 else self._rows[0]
        head, tail = _split(rows, n, self.specs)
        self._rows = [tail] if len(tail.ids) else []
        self._buffered = len(tail.ids)
        self._append(self.f["image_id"], np.asarray(head.ids, dtype=object))
        self._append(self.f["image_path"], np.asarray(head.paths, dtype=object))
        self._append(self.f["image_hw"], head.hw)
        self._append(self.f["image_sha256"], np.asarray(head.sha256, dtype="S64"))
        for g in self.groups:
            off = self.f[f"{g}_offsets"]
            self._append(off, off[-1] + np.cumsum(head.counts[g]))
        for s in self.specs:
            self._append(self.f[s.name], np.asarray(head.fields[s.name]).astype(self.f[s.name].dtype, copy=False))

    def add_failures(self, ids: list[str], reasons: list[str], sha256: list[str] | None = None) -> None:
        """Images that could not be extracted, with the reason (written, in order, when the store is closed)."""
        self._failed[0].extend(ids)
        self._failed[1].extend(reasons)
        self._failed[2].extend(sha256 if sha256 is not None else [""] * len(ids))

    def close(self, flush: bool = True) -> None:
        """Write what is buffered and close; `flush=False` (an abandoned file) only closes."""
        if flush and self.f:
            while self._buffered:
                self._write_block(min(self._buffered, WRITE_BLOCK))
            ids, reasons, sha = self._failed
            self._append(self.f["failed/image_id"], np.asarray(ids, dtype=object))
            self._append(self.f["failed/reason"], np.asarray(reasons, dtype=object))
            self._append(self.f["failed/sha256"], np.asarray(sha, dtype="S64"))
            self._failed = ([], [], [])
        self.f.close()


class Rows(NamedTuple):
    """Consecutive rows of a store: ids, paths, (n, 2) hw, fields (ragged ones as their rows), ragged row counts
    per image by group, image sha256 digests."""

    ids: list[str]
    paths: list[str]
    hw: np.ndarray
    fields: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    sha256: list[str]


def _concat(parts: list[Rows], specs: list[FieldSpec]) -> Rows:
    return Rows([i for p in parts for i in p.ids], [x for p in parts for x in p.paths],
                np.concatenate([p.hw for p in parts]),
                {s.name: np.concatenate([np.asarray(p.fields[s.name]) for p in parts]) for s in specs},
                {g: np.concatenate([p.counts[g] for p in parts]) for g in parts[0].counts},
                [x for p in parts for x in p.sha256])


def _split(rows: Rows, n: int, specs: list[FieldSpec]) -> tuple[Rows, Rows]:
    """The first n images' rows and the rest."""
    cut = {g: int(c[:n].sum()) for g, c in rows.counts.items()}
    head = {s.name: (rows.fields[s.name][:cut[s.ragged]] if s.ragged else rows.fields[s.name][:n]) for s in specs}
    tail = {s.name: (rows.fields[s.name][cut[s.ragged]:] if s.ragged else rows.fields[s.name][n:]) for s in specs}
    return (Rows(rows.ids[:n], rows.paths[:n], rows.hw[:n], head, {g: c[:n] for g, c in rows.counts.items()},
                 rows.sha256[:n]),
            Rows(rows.ids[n:], rows.paths[n:], rows.hw[n:], tail, {g: c[n:] for g, c in rows.counts.items()},
                 rows.sha256[n:]))


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
                from .virtual_merge import ShardWindow, check_sources, is_virtual

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
        from .virtual_merge import is_virtual

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
        w.close(flush=False)
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


MERGE_KEYS = ("preset", "extractor", "config", "fields", "weights_sha256", "storage_dtype")


def open_shards(shards: list[str | os.PathLike]) -> list[FeatureStore]:
    """The shard stores (closed: reopened when streamed, one open file at a time whatever the shard count, for
    ulimit -n), after checking they come from one extractor run (MERGE_KEYS equal). Shared by both merge modes."""
    if not shards:
        raise StoreError("no shards to merge")
    stores = [FeatureStore(s) for s in shards]
    first = stores[0].attrs
    for s in stores:
        a = s.attrs
        s.close()
        for k in MERGE_KEYS:
            if a.get(k) != first.get(k):
                raise StoreError(f"{s.path}: attribute {k!r} differs from {stores[0].path}: cannot merge")
    return stores


def check_failures(path: str, failed_ids: list[str], seen: set[str]) -> None:
    """A failed image is neither extracted nor failed twice (`seen` accumulates)."""
    for i in failed_ids:
        if i in seen:
            raise StoreError(f"image id {i!r} is both extracted and failed, or failed twice (in {path})")
        seen.add(i)


def check_expected(seen: set[str], expected_ids: list[str] | None) -> None:
    """Given the manifest's ids, every one was seen (as a row or a failure) and nothing else was."""
    if expected_ids is None:
        return
    exp = set(expected_ids)
    missing = exp - seen
    extra = seen - exp
    if missing:
        raise StoreError(f"{len(missing)} manifest ids missing from the shards, e.g. {sorted(missing)[:5]}")
    if extra:
        raise StoreError(f"{len(extra)} ids not in the manifest, e.g. {sorted(extra)[:5]}")


def merge(shards: list[str | os.PathLike], out: str | os.PathLike, expected_ids: list[str] | None = None,
          chunk: int = 256) -> dict[str, int]:
    """Concatenate shard stores into `out` (atomically), validating as it streams.

    Checks: same preset/config/weights/fields in every shard; every id once; finite values; declared shapes; and,
    given `expected_ids` (the manifest), every expected id present exactly once as a row or a failure.
    """
    stores = open_shards(shards)
    first = stores[0].attrs
    specs = stores[0].specs
    attrs = {k: v for k, v in first.items() if k not in ("format", "format_version", "fields", "storage_dtype", "created")}
    seen: set[str] = set()
    n_rows = n_failed = 0
    try:
        with writing(out, specs, attrs, storage_dtype=first.get("storage_dtype", "float32"),
                     compression=first.get("compression") or None) as w:
            for s in stores:
                for a in range(0, len(s), chunk):  # read_rows: the images' sha256 travel with their rows
                    r = read_rows(s, a, min(len(s), a + chunk))
                    _validate_rows(s.path, specs, r.ids, r.fields, seen)
                    w.append(*r)
                    n_rows += len(r.ids)
                failed = read_failures(s)
                check_failures(s.path, [i for i, _, _ in failed], seen)
                w.add_failures([i for i, _, _ in failed], [r for _, r, _ in failed], [d for _, _, d in failed])
                n_failed += len(failed)
                s.close()
            check_expected(seen, expected_ids)
    finally:
        for s in stores:
            s.close()
    return {"images": n_rows, "failed": n_failed}
