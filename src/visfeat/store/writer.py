"""Writes a store: rows appended in any batching, laid out in fixed blocks (store/format.py), the file appearing
only when complete (`writing`). Its own module so that makers of stores (extraction, merge, import, k-means) share
one writer and so write one layout."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from visfeat.store.format import (
    FAILED,
    FAILED_ID,
    FAILED_REASON,
    FAILED_SHA256,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_HW,
    IMAGE_ID,
    IMAGE_PATH,
    IMAGE_SHA256,
    SHA,
    STR,
    WRITE_BLOCK,
    Attr,
    FieldSpec,
    created_time,
    offsets_name,
    specs_to_json,
)


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
        self.f.create_dataset(IMAGE_ID, (0,), STR, maxshape=(None,), chunks=(4096,), **kw)
        self.f.create_dataset(IMAGE_PATH, (0,), STR, maxshape=(None,), chunks=(4096,), **kw)
        self.f.create_dataset(IMAGE_HW, (0, 2), np.int32, maxshape=(None, 2), chunks=(4096, 2), **kw)
        self.f.create_dataset(IMAGE_SHA256, (0,), SHA, maxshape=(None,), chunks=(4096,), **kw)
        self.groups = sorted({s.ragged for s in specs if s.ragged})
        for g in self.groups:
            self.f.create_dataset(offsets_name(g), data=np.zeros(1, np.int64), maxshape=(None,), chunks=(4096,), **kw)
        for s in specs:
            dt = np.dtype(s.dtype)
            if dt.kind == "f" and storage_dtype == "float16":
                dt = np.dtype(np.float16)
            self.f.create_dataset(
                s.name, (0, *s.shape), dt, maxshape=(None, *s.shape),
                chunks=(_chunk_rows(s.shape, dt.itemsize), *s.shape), **kw,
            )
        self.f.create_group(FAILED, track_order=False)
        self.f.create_dataset(FAILED_ID, (0,), STR, maxshape=(None,), chunks=(1024,), track_times=False)
        self.f.create_dataset(FAILED_REASON, (0,), STR, maxshape=(None,), chunks=(1024,), track_times=False)
        self.f.create_dataset(FAILED_SHA256, (0,), SHA, maxshape=(None,), chunks=(1024,), track_times=False)
        base = {
            Attr.FORMAT: FORMAT,
            Attr.FORMAT_VERSION: FORMAT_VERSION,
            Attr.FIELDS: specs_to_json(specs),
            Attr.STORAGE_DTYPE: storage_dtype,
            Attr.CREATED: created_time(),
        }
        for k, v in {**base, **attrs}.items():
            self.f.attrs[k] = v if v is not None else ""
        self._rows: list[Rows] = []  # appended, not yet written
        self._buffered = 0
        self._failed: tuple[list[str], list[str], list[str]] = ([], [], [])

    @staticmethod
    def _append(ds: h5py.Dataset, data: np.ndarray) -> None:
        """`ds.resize` and `ds[n:] = data` through HDF5's own calls (the same extent change and hyperslab write):
        h5py's per-call work costs more than a block's bytes when features are small."""
        if len(data) == 0:
            return
        d, data = ds.id, np.asarray(data)
        shape = d.shape
        d.set_extent((shape[0] + len(data), *shape[1:]))
        space = d.get_space()
        space.select_hyperslab((shape[0], *(0 for _ in shape[1:])), (len(data), *shape[1:]))
        if data.dtype.kind != "O":
            data = data.astype(ds.dtype, copy=False)
        mtype = h5py.h5t.py_create(ds.dtype if data.dtype.kind == "O" else data.dtype)
        d.write(h5py.h5s.create_simple(data.shape), space, np.ascontiguousarray(data), mtype)

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
        self._append(self.f[IMAGE_ID], np.asarray(head.ids, dtype=object))
        self._append(self.f[IMAGE_PATH], np.asarray(head.paths, dtype=object))
        self._append(self.f[IMAGE_HW], head.hw)
        self._append(self.f[IMAGE_SHA256], np.asarray(head.sha256, dtype=SHA))
        for g in self.groups:
            off = self.f[offsets_name(g)]
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
            self._append(self.f[FAILED_ID], np.asarray(ids, dtype=object))
            self._append(self.f[FAILED_REASON], np.asarray(reasons, dtype=object))
            self._append(self.f[FAILED_SHA256], np.asarray(sha, dtype=SHA))
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
