"""Merging an extraction's shard stores into one. `merge` copies every row into a store like any other;
`merge_virtual` (`merge: virtual`) copies only what grows with the image count (the per-image datasets, the
`failed` group, the ragged offsets rebased) and maps each field onto the shards' rows as HDF5 virtual datasets,
so a merge writes O(images) bytes instead of every feature again, and h5py reads it as the copy (store/vds.py:
how). Both stream and validate alike: one extractor run (MERGE_KEYS), every id once, declared shapes, finite
values, and given the manifest, its ids exactly."""
from __future__ import annotations

import os
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


def validate_rows(path: str, specs: list[FieldSpec], ids: list[str], fields: dict, seen: set[str]) -> None:
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
    attrs = {k: v for k, v in first.items() if k not in WRITER_ATTRS}
    seen: set[str] = set()
    n_rows = n_failed = 0
    try:
        with writing(out, specs, attrs, storage_dtype=first.get(Attr.STORAGE_DTYPE, "float32"),
                     compression=first.get(Attr.COMPRESSION) or None) as w:
            for s in stores:
                for a in range(0, len(s), chunk):  # read_rows: the images' sha256 travel with their rows
                    r = read_rows(s, a, min(len(s), a + chunk))
                    validate_rows(s.path, specs, r.ids, r.fields, seen)
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
    """Merge shard stores into `out` (atomically) as a virtual store; validated as `merge` validates (same
    extractor run, every id once, finite values, declared shapes, the manifest's ids exactly), streaming."""
    stores = open_shards(shards)
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
                ids = [x.decode() for x in data[IMAGE_ID]]
                n = len(ids)
                offs = {name: data[name].astype(np.int64) for name in offsets}
                _validate_shard(s.path, specs, {name: have[name][0] for name in fields}, ids, offs, seen, chunk)
                failed = [x.decode() for x in data[FAILED_ID]]
                check_failures(s.path, failed, seen)
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
                n_failed += len(failed)
                s.close()
            copied.flush()
            check_expected(seen, expected_ids)
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
                    offsets: dict[str, np.ndarray], seen: set[str], chunk: int) -> None:
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
        validate_rows(path, specs, ids[a:b], values, seen)


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
