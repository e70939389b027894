"""clip-retrieval's embedding layout (what its `clip_inference` writes), read by embedding-reader, autofaiss and
clip-retrieval's index and back end (`visfeat export --format embedding-reader STORE OUT`):

    OUT/img_emb/img_emb_{i}.npy          (n_i, D) one row per image of part i
    OUT/metadata/metadata_{i}.parquet    the same rows in the same order: image_path (clip-retrieval's name for
                                         the file column; the store's path, relative to the dataset root), image_id
    OUT/text_emb/text_emb_{i}.npy        a text store (engine/text.py): one row per caption, and its metadata
                                         caption (clip-retrieval's column), image_id, caption_id

The vector is a fixed 1-D field of the store (`global` unless `field` says), or a text store's `text`. Part
numbers are zero-padded to the digits of the part count, as clip-retrieval's writer pads them, so the readers'
name order is part order. A part is streamed chunk by chunk (memory: one chunk, CHUNK_BYTES of vectors), to a
local folder or s3:// (interop/destinations.py: each file appears only when complete). Parts a previous export
left under OUT that this one did not write are removed afterwards, so readers never mix two exports.
Defaults follow clip-retrieval: float16, L2-normalised (zero vectors stay zero), so autofaiss's default inner
product metric is the cosine similarity clip-retrieval's indices rank by; `normalize=False` keeps the store's
values (its `global` is unnormalised), `dtype="float32"` its precision.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import h5py
import numpy as np

from visfeat.interop.destinations import Writable, destination
from visfeat.store.format import IMAGE_ID, IMAGE_PATH
from visfeat.store.reader import FeatureStore, rows_of

PART_ROWS = 10**6  # clip-retrieval clip_retrieval/clip_inference/main.py: write_batch_size=10**6
DTYPES = ("float16", "float32")  # clip_retrieval/clip_inference/mapper.py writes float16
CHUNK_BYTES = 64 << 20  # vectors read, normalised and written at a time
TEXT_FORMAT = "visfeat-text"  # engine/text.py's store


@dataclass(frozen=True)
class Source:
    """What one export reads: `kind` (img or text, the layout's folder prefix), the vectors and the metadata
    columns (clip-retrieval's names -> the store's datasets), all rows in store order."""

    kind: str
    vectors: h5py.Dataset
    meta: dict[str, h5py.Dataset]


def is_text_store(path: str) -> bool:
    with h5py.File(path, "r") as h:
        return h.attrs.get("format") == TEXT_FORMAT


def _source(path: str, field: str) -> Source:
    """The vectors and metadata of a text store, or of an image store's fixed 1-D `field` (the exporter checked
    that the store has one)."""
    if is_text_store(path):
        h = h5py.File(path, "r")
        return Source("text", h["text"], {"caption": h["caption"], "image_id": h["image_id"],
                                          "caption_id": h["caption_id"]})
    h = FeatureStore(path).h5
    return Source("img", h[field], {"image_path": h[IMAGE_PATH], IMAGE_ID: h[IMAGE_ID]})


def l2_normalised(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm; zero rows stay zero (clip_retrieval/clip_inference/mapper.py `normalized`)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1
    return x / n


def part_names(kind: str, n_parts: int) -> list[tuple[str, str]]:
    """(npy, parquet) relative names of each part, padded to the digits of the part count as clip-retrieval pads."""
    w = len(str(n_parts))
    return [(f"{kind}_emb/{kind}_emb_{i:0{w}d}.npy", f"metadata/metadata_{i:0{w}d}.parquet") for i in range(n_parts)]


def _write_npy(fh: Writable, src: Source, a: int, b: int, dtype: str, normalize: bool, chunk: int) -> None:
    """Rows a..b as one .npy, streamed: the header states the whole shape, then the rows follow chunk by chunk."""
    dt = np.dtype(dtype)
    np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False,
                                              "shape": (b - a, src.vectors.shape[1])})
    for c in range(a, b, chunk):
        x = rows_of(src.vectors, c, min(b, c + chunk)).astype(np.float32)
        fh.write(np.ascontiguousarray((l2_normalised(x) if normalize else x).astype(dt)).tobytes())


def _write_parquet(fh: Writable, src: Source, a: int, b: int, chunk: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(k, pa.string()) for k in src.meta])
    with pq.ParquetWriter(pa.PythonFile(fh, mode="w"), schema) as w:
        for c in range(a, b, chunk):
            e = min(b, c + chunk)
            w.write_table(pa.table({k: ds.asstr()[c:e].tolist() for k, ds in src.meta.items()}, schema=schema))


PART = re.compile(r"(img|text)_emb_\d+\.npy|metadata_\d+\.parquet")


def export_embedding_reader(path: str, out: str, field: str = "global", part_rows: int = PART_ROWS,
                            dtype: str = "float16", normalize: bool = True) -> int:
    """Write the store's vectors at `path` in clip-retrieval's layout under `out` (a folder or s3://bucket/prefix);
    returns the rows written."""
    if dtype not in DTYPES:
        raise ValueError(f"embedding-reader: --dtype is one of {', '.join(DTYPES)}, not {dtype!r}")
    if part_rows < 1:
        raise ValueError(f"embedding-reader: --part-rows must be at least 1, not {part_rows}")
    src = _source(path, field)
    dest = destination(out)
    other = "text" if src.kind == "img" else "img"
    if any(PART.fullmatch(f) for f in dest.list(f"{other}_emb")):
        raise ValueError(f"embedding-reader: {out} holds {other}_emb/ of another export, whose rows metadata/ "
                         f"describes: export to another folder")
    n = src.vectors.shape[0]
    chunk = max(1, CHUNK_BYTES // (4 * max(1, src.vectors.shape[1])))
    names = part_names(src.kind, -(-n // part_rows))
    for i, (npy, parquet) in enumerate(names):
        a, b = i * part_rows, min(n, (i + 1) * part_rows)
        with dest.open(npy) as fh:
            _write_npy(fh, src, a, b, dtype, normalize, chunk)
        with dest.open(parquet) as fh:
            _write_parquet(fh, src, a, b, chunk)
    written = {p for pair in names for p in pair}
    for sub in (f"{src.kind}_emb", "metadata"):
        for f in dest.list(sub):
            if PART.fullmatch(f) and f"{sub}/{f}" not in written:
                dest.remove(f"{sub}/{f}")
    return n
