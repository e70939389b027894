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
    FORMAT_VERSION,
    IMAGE_ID,
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
from visfeat.store.reader import FeatureStore, read_failures, read_rows
from visfeat.store.writer import atomic_path, writing


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


def validate_rows(path: str, specs: list[FieldSpec], ids: list[str], fields: dict) -> None:
    """Declared shapes, finite values (the ids are checked by `IdsOnce`)."""
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


def open_shards(shards: list[str | os.PathLike]) -> list[FeatureStore]:
    """The shard stores (closed: reopened when streamed, one open file at a time whatever the shard count, for
    ulimit -n), after checking they come from one extractor run (MERGE_KEYS equal). Shared by both merge modes."""
    if not shards:
        raise StoreError("no shards to merge")
    stores, first = [], None
    for path in shards:
        s = FeatureStore(path)  # opens the file: closed before the next opens (each holds HDF5's caches)
        a = s.attrs
        s.close()
        stores.append(s)
        first = a if first is None else first
        for k in MERGE_KEYS:
            if a.get(k) != first.get(k):
                raise StoreError(f"{s.path}: attribute {k!r} differs from {stores[0].path}: cannot merge")
    return stores


CHUNK_BYTES = 64 << 20  # a copy merge reads this much of a shard at a time: few HDF5 calls per row, bounded memory
CHUNK_ROWS = (256, 8192)  # ... within these many rows


def chunk_rows(s: FeatureStore, specs: list[FieldSpec]) -> int:
    """Rows of `s` a copy merge reads at a time: CHUNK_BYTES of its fields (ragged ones at their mean rows per
    image), within CHUNK_ROWS."""
    h, n = s.h5, max(1, len(s))
    row = sum(h[sp.name].size * h[sp.name].dtype.itemsize for sp in specs) / n
    return int(min(max(CHUNK_BYTES // max(row, 1), CHUNK_ROWS[0]), CHUNK_ROWS[1]))


def merge(shards: list[str | os.PathLike], out: str | os.PathLike, expected: ExpectedIds | None = None,
          chunk: int | None = None) -> dict[str, int]:
    """Concatenate shard stores into `out` (atomically), validating as it streams.

    Checks: same preset/config/weights/fields in every shard; every id once; finite values; declared shapes; and,
    given `expected` (the manifest's ids, shard by shard: shard store k holds exactly expected[k], each id as a row
    or a failure). Memory: a chunk of rows (`chunk`, or `chunk_rows`) and one shard's ids (plus 8 bytes an image
    without `expected`).
    """
    stores = open_shards(shards)
    once = IdsOnce(stores, expected)
    first = stores[0].attrs
    specs = stores[0].specs
    attrs = {k: v for k, v in first.items() if k not in WRITER_ATTRS}
    n_rows = n_failed = 0
    try:
        with writing(out, specs, attrs, storage_dtype=first.get(Attr.STORAGE_DTYPE, "float32"),
                     compression=first.get(Attr.COMPRESSION) or None) as w:
            for k, s in enumerate(stores):
                once.shard(k, *shard_ids(s.h5))
                step = chunk or chunk_rows(s, specs)
                for a in range(0, len(s), step):  # read_rows: the images' sha256 travel with their rows
                    r = read_rows(s, a, min(len(s), a + step))
                    validate_rows(s.path, specs, r.ids, r.fields)
                    w.append(*r)
                    n_rows += len(r.ids)
                failed = read_failures(s)
                w.add_failures([i for i, _, _ in failed], [r for _, r, _ in failed], [d for _, _, d in failed])
                n_failed += len(failed)
                s.close()
            once.finish()
    finally:
        for s in stores:
            s.close()
    return {"images": n_rows, "failed": n_failed}


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


def merge_virtual(shards: list[str | os.PathLike], out: str | os.PathLike, expected: ExpectedIds | None = None,
                  chunk: int = 256) -> dict[str, int]:
    """Merge shard stores into `out` (atomically) as a virtual store; validated as `merge` validates (same
    extractor run, every id once, finite values, declared shapes, the manifest's ids exactly), streaming."""
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
                have = _layout(s.h5)
                if have.keys() != first.keys():
                    raise StoreError(f"{s.path}: datasets {sorted(set(have) ^ set(first))} differ from "
                                     f"{stores[0].path}: cannot merge")
                for name, (_, dtype, shape) in have.items():
                    if dtype != first[name][1] or shape[1:] != first[name][2][1:]:
                        raise StoreError(f"{s.path}: {name} is {dtype} {shape[1:]}, {first[name][1]} "
                                         f"{first[name][2][1:]} in {stores[0].path}: cannot merge")
                data = {name: ds[()] for name, (ds, _, _) in have.items() if name not in fields}  # O(images)
                once.shard(k, list(data[IMAGE_ID]), list(data[FAILED_ID]))
                ids = [x.decode() for x in data[IMAGE_ID]]
                n = len(ids)
                offs = {name: data[name].astype(np.int64) for name in offsets}
                _validate_shard(s.path, specs, {name: have[name][0] for name in fields}, ids, offs, chunk)
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
                            raise StoreError(f"{s.path}: per-image dataset {name} has {shape[0]} rows, {IMAGE_ID} {n}")
                        copied.add(name, data[name])
                sources.append((rel, os.path.getsize(s.path), n))
                n_rows += n
                n_failed += len(data[FAILED_ID])
                s.close()
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


def _validate_shard(path: str, specs: list, datasets: dict[str, h5py.Dataset], ids: list[str],
                    offsets: dict[str, np.ndarray], chunk: int) -> None:
    """`validate_rows` over a shard's fields in row chunks (memory bounded by `chunk`)."""
    for a in range(0, len(ids), chunk):
        b = min(len(ids), a + chunk)
        values = {}
        for s in specs:
            if s.ragged:
                off = offsets[offsets_name(s.ragged)]
                values[s.name] = datasets[s.name][int(off[a]):int(off[b])]
            else:
                values[s.name] = datasets[s.name][a:b]
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
