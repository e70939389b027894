"""Merging an extraction's shard stores into one. `merge` copies every row into a store like any other;
`merge_virtual` (`merge: virtual`) copies only what grows with the image count (the per-image datasets, the
`failed` group, the ragged offsets rebased) and maps each field onto the shards' rows as HDF5 virtual datasets,
so a merge writes O(images) bytes instead of every feature again, and h5py reads it as the copy (store/vds.py:
how). Both stream and validate alike: one extractor run (MERGE_KEYS), every id once, declared shapes, finite
values, and given the manifest, its ids exactly. Memory is one shard's, whatever the dataset's size: the manifest's
ids are compared shard by shard (`expected[k]`, which the caller reads from the manifest: the store layer never
reads a manifest), and without them (no manifest, or one that lists tars, not images) ids are told apart across
shards by 64-bit hashes, 8 bytes an image (`IdsOnce`)."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from visfeat.store.format import (
    FAILED_ID,
    FAILED_REASON,
    FAILED_SHA256,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_HW,
    IMAGE_ID,
    IMAGE_PATH,
    IMAGE_SHA256,
    MERGE_KEYS,
    SOURCES_BYTES,
    SOURCES_IMAGES,
    SOURCES_PATH,
    SOURCES,
    STR,
    VIRTUAL,
    WRITER_ATTRS,
    Attr,
    FieldSpec,
    StoreError,
    created_time,
    offsets_name,
)
from visfeat.store.reader import FeatureStore
from visfeat.store.writer import Rows, atomic_path, writing


ExpectedIds = Iterable[Iterable[str]]  # item k: the manifest's ids of shard k, taken when shard store k is merged
# (a generator streaming the manifest in shard order holds one shard's ids at a time)


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)  # FNV-1a 64 (Fowler, Noll, Vo: http://www.isthe.com/chongo/tech/comp/fnv/)
_FNV_PRIME = np.uint64(0x100000001B3)


def id_hashes(ids: Sequence[bytes]) -> np.ndarray:
    """64-bit FNV-1a of each utf-8 id, vectorised over the ids (one numpy pass per byte position), so telling ids
    apart across a whole dataset costs 8 bytes an image instead of a Python string."""
    if not len(ids):
        return np.empty(0, np.uint64)
    a = np.array(ids, dtype=bytes)
    lens = np.char.str_len(a)
    b = a.view(np.uint8).reshape(len(a), -1)
    h = np.full(len(a), _FNV_OFFSET, np.uint64)
    for j in range(b.shape[1]):
        h = np.where(lens > j, (h ^ b[:, j]) * _FNV_PRIME, h)
    return h


def shard_ids(h: h5py.File) -> tuple[list[bytes], list[bytes]]:
    """A shard store's image ids and failed ids, as utf-8 bytes (O(shard))."""
    return list(h[IMAGE_ID][()]), list(h[FAILED_ID][()])


class IdsOnce:
    """"Every id once" across shards: exact within a shard (a set of its ids, O(shard)) and, across shards without
    a manifest to compare each shard with, by 64-bit hashes of every id; hashes seen twice are then looked up
    exactly in a second pass, so a hash collision is never reported as a repeated id."""

    def __init__(self, stores: list[FeatureStore], expected: ExpectedIds | None):
        self.stores, self.expected = stores, None if expected is None else iter(expected)
        self.hashes = np.empty(0 if expected is not None else self._total(), np.uint64)
        self.filled = 0

    def _total(self) -> int:
        n = 0
        for s in self.stores:
            n += s.h5[IMAGE_ID].shape[0] + s.h5[FAILED_ID].shape[0]
            s.close()
        return n

    def shard(self, k: int, ids: list[bytes], failed: list[bytes]) -> None:
        """Shard k's ids and failed ids: each once; the manifest's shard k exactly, when given."""
        path = self.stores[k].path
        seen: set[bytes] = set()
        for i in ids:
            if i in seen:
                raise StoreError(f"image id {i.decode()!r} appears more than once (in {path})")
            seen.add(i)
        for i in failed:
            if i in seen:
                raise StoreError(f"image id {i.decode()!r} is both extracted and failed, or failed twice (in {path})")
            seen.add(i)
        if self.expected is None:
            h = id_hashes(ids + failed)
            self.hashes[self.filled:self.filled + len(h)] = h
            self.filled += len(h)
            return
        part = next(self.expected, None)
        if part is None:
            raise StoreError(f"the manifest has {k} shards, {len(self.stores)} shard stores given")
        want = [str(i).encode() for i in part]
        exp = set(want)
        if len(exp) != len(want):
            raise StoreError(f"the manifest lists an id of shard {k} more than once")
        missing, extra = exp - seen, seen - exp
        if missing:
            raise StoreError(f"{len(missing)} manifest ids missing from shard {k} ({path}), e.g. "
                             f"{sorted(x.decode() for x in missing)[:5]}")
        if extra:
            raise StoreError(f"{len(extra)} ids of shard {k} ({path}) not in the manifest, e.g. "
                             f"{sorted(x.decode() for x in extra)[:5]}")

    def finish(self) -> None:
        """Across shards: no id in two of them (checked by hash, confirmed exactly)."""
        if self.expected is not None:
            more = sum(1 for _ in self.expected)
            if more:
                raise StoreError(f"the manifest has {len(self.stores) + more} shards, {len(self.stores)} shard "
                                 "stores given")
            return
        h = self.hashes[:self.filled]
        h.sort()
        twice = np.unique(h[1:][h[1:] == h[:-1]])
        self.hashes = np.empty(0, np.uint64)
        if len(twice):
            self._confirm(twice)

    def _confirm(self, twice: np.ndarray) -> None:
        where: dict[bytes, str] = {}
        for s in self.stores:
            ids, failed = shard_ids(s.h5)
            s.close()
            both = ids + failed
            for k in np.flatnonzero(np.isin(id_hashes(both), twice)):
                i = both[k]
                if i in where:
                    raise StoreError(f"image id {i.decode()!r} appears more than once (in {where[i]} and {s.path})")
                where[i] = s.path


def validate_rows(path: str, specs: list[FieldSpec], ids: Sequence[str | bytes], fields: dict) -> None:
    """Declared shapes, finite values (the ids, str or their stored utf-8 bytes, are checked by `IdsOnce`)."""
    for spec in specs:
        arr = fields[spec.name]
        if tuple(arr.shape[1:]) != tuple(spec.shape):
            raise StoreError(f"{path}: field {spec.name} has shape {arr.shape[1:]}, declared {spec.shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            where = ""
            if not spec.ragged:
                row = int(np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(1))[0])
                where = f" (image {_decoded(ids[row])!r})"
            raise StoreError(f"{path}: non-finite values in field {spec.name}{where}")


def open_shards(shards: list[str | os.PathLike]) -> list[FeatureStore]:
    """The shard stores (closed: reopened when streamed, one open file at a time whatever the shard count, for
    ulimit -n), after checking they come from one extractor run (MERGE_KEYS equal). Shared by both merge modes.
    Each shard's attributes are read once, as stored (`_raw_attrs`): decoding every attribute of every shard cost
    more than reading its rows."""
    if not shards:
        raise StoreError("no shards to merge")
    stores, first = [FeatureStore(shards[0])], None
    stores[0].close()
    for path in shards:
        with h5py.File(path, "r") as h:
            fmt, merged, *a = _raw_attrs(h, (Attr.FORMAT, Attr.MERGE, *MERGE_KEYS))
        if first is None:  # shard 0: stores[0]
            first = a
            continue
        # anything but the writer's FORMAT (a variable-length string), or a virtual store: FeatureStore's own
        # checks (format, sources) refuse or pass it, as they did for every shard
        if type(fmt) is not bytes or fmt != FORMAT.encode() or merged is not None:
            s = FeatureStore(path)
            s.close()
        else:
            s = FeatureStore.__new__(FeatureStore)  # not opened: its specs are shard 0's (Attr.FIELDS agree)
            s.__setstate__({"path": str(path), "specs": stores[0].specs})
        stores.append(s)
        for k, x, y in zip(MERGE_KEYS, a, first):
            if x != y and _decoded(x) != _decoded(y):
                raise StoreError(f"{s.path}: attribute {k!r} differs from {stores[0].path}: cannot merge")
    return stores


def _raw_attrs(h: h5py.File, names: Sequence[str]) -> list:
    """The attributes as stored (strings as bytes; None where absent), without h5py's per-attribute decoding."""
    out = []
    for name in names:
        try:
            a = h5py.h5a.open(h.id, name.encode())
        except KeyError:
            out.append(None)
            continue
        arr = np.empty(a.shape, a.dtype)
        a.read(arr)
        out.append(arr[()])
    return out


def _decoded(v):
    """An attribute as `decoded_attrs` gives it, for comparing one stored as bytes with one stored as str."""
    return v.decode() if isinstance(v, bytes) else v


CHUNK_BYTES = 64 << 20  # a copy merge reads this much of a shard at a time: few HDF5 calls per row, bounded memory
CHUNK_ROWS = (256, 8192)  # ... within these many rows


def chunk_rows(h: h5py.File, n: int, specs: list[FieldSpec]) -> int:
    """Rows of a shard file (`n` images) a copy merge reads at a time: CHUNK_BYTES of its fields (ragged ones at
    their mean rows per image), within CHUNK_ROWS."""
    row = 0
    for sp in specs:
        d = h5py.h5d.open(h.id, sp.name.encode())
        row += int(np.prod(d.shape)) * d.dtype.itemsize
    row /= max(1, n)
    return int(min(max(CHUNK_BYTES // max(row, 1), CHUNK_ROWS[0]), CHUNK_ROWS[1]))


def read(h: h5py.File, name: str, a: int = 0, b: int | None = None) -> np.ndarray:
    """Rows a..b (to the end by default, clipped as a slice) of a dataset, strings as their stored bytes, through
    HDF5's own read: h5py's `Dataset[...]` costs several times more per call, and a shard of small features costs
    its calls, not its bytes."""
    return read_ds(h5py.h5d.open(h.id, name.encode()), a, b)


def read_ds(d: h5py.h5d.DatasetID, a: int = 0, b: int | None = None) -> np.ndarray:
    """`read` of an open dataset."""
    space = d.get_space()
    shape = space.shape
    if not shape:
        return h5py.Dataset(d)[()]
    b = shape[0] if b is None else min(b, shape[0])
    a = min(a, b)
    out = np.empty((b - a, *shape[1:]), d.dtype)
    if b > a:
        if b - a != shape[0]:
            space.select_hyperslab((a, *(0 for _ in shape[1:])), out.shape)
        d.read(h5py.h5s.create_simple(out.shape), space, out)
    return out


def shard_rows(h: h5py.File, specs: list[FieldSpec], ids: np.ndarray, a: int, b: int) -> Rows:
    """Rows a..b of an open shard file as `read_rows` gives them, but with the strings (ids, paths, digests) as the
    stored bytes: the writer stores bytes as they are, so a copy needs no decoding and re-encoding per row."""
    counts, fields, spans = {}, {}, {}
    for s in specs:
        if s.ragged:
            if s.ragged not in spans:
                off = read(h, offsets_name(s.ragged), a, b + 1)
                spans[s.ragged] = (int(off[0]), int(off[-1]))
                counts[s.ragged] = np.diff(off)
            fields[s.name] = read(h, s.name, *spans[s.ragged])
        else:
            fields[s.name] = read(h, s.name, a, b)
    return Rows(list(ids[a:b]), list(read(h, IMAGE_PATH, a, b)), read(h, IMAGE_HW, a, b), fields, counts,
                _digests(h, IMAGE_SHA256, a, b))


def _digests(h: h5py.File, name: str, a: int, b: int) -> list:
    """`reader.digests` as stored bytes ("" in a store written before the column)."""
    return list(read(h, name, a, b)) if name.encode() in h.id else [""] * (b - a)


def merge(shards: list[str | os.PathLike], out: str | os.PathLike, expected: ExpectedIds | None = None,
          chunk: int | None = None) -> dict[str, int]:
    """Concatenate shard stores into `out` (atomically), validating as it streams.

    Checks: same preset/config/weights/fields in every shard; every id once; finite values; declared shapes; and,
    given `expected` (the manifest's ids, shard by shard: shard store k holds exactly expected[k], each id as a row
    or a failure). Memory: a chunk of rows (`chunk`, or `chunk_rows`) and one shard's ids (plus 8 bytes an image
    without `expected`). Each shard file is opened once and each dataset read once per chunk (a shard of tiny
    features costs its HDF5 calls, not its bytes).
    """
    stores = open_shards(shards)
    once = IdsOnce(stores, expected)
    first = stores[0].attrs
    specs = stores[0].specs
    attrs = {k: v for k, v in first.items() if k not in WRITER_ATTRS}
    stores[0].close()
    n_rows = n_failed = 0
    try:
        with writing(out, specs, attrs, storage_dtype=first.get(Attr.STORAGE_DTYPE, "float32"),
                     compression=first.get(Attr.COMPRESSION) or None) as w:
            for k, s in enumerate(stores):
                with h5py.File(s.path, "r") as h:  # checked by open_shards (FeatureStore's checks where they apply)
                    ids, failed = read(h, IMAGE_ID), read(h, FAILED_ID)
                    once.shard(k, list(ids), list(failed))
                    n = len(ids)
                    step = chunk or chunk_rows(h, n, specs)
                    for a in range(0, n, step):
                        r = shard_rows(h, specs, ids, a, min(n, a + step))
                        validate_rows(s.path, specs, r.ids, r.fields)
                        w.append(*r)
                    n_rows += n
                    w.add_failures(list(failed), list(read(h, FAILED_REASON)),
                                   _digests(h, FAILED_SHA256, 0, len(failed)))
                    n_failed += len(failed)
            once.finish()
    finally:
        for s in stores:
            s.close()
    return {"images": n_rows, "failed": n_failed}


def _layout(h: h5py.File) -> dict[str, tuple[h5py.h5d.DatasetID, np.dtype, tuple[int, ...]]]:
    """Every dataset of a store by its path (`image_id`, `failed/reason`, ...) with its dtype and shape (opened
    through HDF5's own calls: `read`)."""
    names: list[str] = []
    h.visit(names.append)
    out = {}
    for name in sorted(names):
        obj = h5py.h5o.open(h.id, name.encode())
        if isinstance(obj, h5py.h5d.DatasetID):
            out[name] = (obj, obj.dtype, obj.shape)
    return out


class _Copied:
    """The datasets a virtual store copies, appended shard after shard in blocks of FLUSH_ROWS rows (HDF5 appends
    cost per call, memory per row)."""

    FLUSH_ROWS = 1 << 16

    def __init__(self, w: h5py.File, first: dict, skip: set[str], offsets: set[str]):
        self.w, self.parts, self.rows = w, {}, 0
        for name, (dsid, dtype, shape) in first.items():
            if name not in skip:
                ds = h5py.Dataset(dsid)
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


def merge_virtual(shards: list[str | os.PathLike], out: str | os.PathLike, expected: ExpectedIds | None = None,
                  chunk: int | None = None) -> dict[str, int]:
    """Merge shard stores into `out` (atomically) as a virtual store; validated as `merge` validates (same
    extractor run, every id once, finite values, declared shapes, the manifest's ids exactly), streaming the fields
    `chunk` rows (or `chunk_rows`) at a time."""
    stores = open_shards(shards)
    once = IdsOnce(stores, expected)
    specs = stores[0].specs
    fields = {s.name: s for s in specs}
    offsets = {offsets_name(s.ragged) for s in specs if s.ragged}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = os.path.abspath(out.parent)
    tmp = atomic_path(out)
    first = _layout(stores[0].h5)
    spans: dict[str, list[tuple[str, int]]] = {name: [] for name in fields}
    base = dict.fromkeys(offsets, 0)
    sources: list[tuple[str, int, int]] = []  # relative path, bytes, images
    n_rows = n_failed = 0
    try:
        with h5py.File(tmp, "w", track_order=False) as w:
            copied = _Copied(w, first, set(fields), offsets)
            for k, s in enumerate(stores):
                with h5py.File(s.path, "r") as h:  # checked by open_shards (FeatureStore's checks where they apply)
                    have = _layout(h)
                    if have.keys() != first.keys():
                        raise StoreError(f"{s.path}: datasets {sorted(set(have) ^ set(first))} differ from "
                                         f"{stores[0].path}: cannot merge")
                    for name, (_, dtype, shape) in have.items():
                        if dtype != first[name][1] or shape[1:] != first[name][2][1:]:
                            raise StoreError(f"{s.path}: {name} is {dtype} {shape[1:]}, {first[name][1]} "
                                             f"{first[name][2][1:]} in {stores[0].path}: cannot merge")
                    data = {name: read_ds(ds) for name, (ds, _, _) in have.items() if name not in fields}  # O(images)
                    once.shard(k, list(data[IMAGE_ID]), list(data[FAILED_ID]))
                    ids = data[IMAGE_ID]
                    n = len(ids)
                    offs = {name: data[name].astype(np.int64) for name in offsets}
                    _validate_shard(s.path, specs, {name: have[name][0] for name in fields}, ids, offs,
                                    chunk or chunk_rows(h, n, specs))
                    rel = os.path.relpath(os.path.abspath(s.path), folder)
                    for name, (_, _, shape) in have.items():
                        if name in fields:
                            spec = fields[name]
                            want = int(offs[offsets_name(spec.ragged)][-1]) if spec.ragged else n
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
                                raise StoreError(f"{s.path}: per-image dataset {name} has {shape[0]} rows, "
                                                 f"{IMAGE_ID} {n}")
                            copied.add(name, data[name])
                    sources.append((rel, os.path.getsize(s.path), n))
                    n_rows += n
                    n_failed += len(data[FAILED_ID])
            copied.flush()
            once.finish()
            for name in sorted(fields):
                _write_virtual(w, name, first[name][1], first[name][2][1:], spans[name])
            w.create_group(SOURCES, track_order=False)
            w.create_dataset(SOURCES_PATH, data=np.array([p for p, _, _ in sources], dtype=object), dtype=STR,
                             track_times=False)
            w.create_dataset(SOURCES_BYTES, data=np.array([b for _, b, _ in sources], np.int64), track_times=False)
            w.create_dataset(SOURCES_IMAGES, data=np.array([k for _, _, k in sources], np.int64), track_times=False)
            for k, v in stores[0].h5.attrs.items():
                w.attrs[k] = v
            w.attrs[Attr.FORMAT_VERSION] = FORMAT_VERSION
            w.attrs[Attr.CREATED] = created_time()
            w.attrs[Attr.MERGE] = VIRTUAL
            stores[0].close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for s in stores:
            s.close()
    return {"images": n_rows, "failed": n_failed}


def _validate_shard(path: str, specs: list, datasets: dict[str, h5py.h5d.DatasetID], ids: np.ndarray,
                    offsets: dict[str, np.ndarray], chunk: int) -> None:
    """`validate_rows` over a shard's fields in row chunks (memory bounded by `chunk`)."""
    for a in range(0, len(ids), chunk):
        b = min(len(ids), a + chunk)
        values = {}
        for s in specs:
            if s.ragged:
                off = offsets[offsets_name(s.ragged)]
                values[s.name] = read_ds(datasets[s.name], int(off[a]), int(off[b]))
            else:
                values[s.name] = read_ds(datasets[s.name], a, b)
        validate_rows(path, specs, ids[a:b], values)


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
