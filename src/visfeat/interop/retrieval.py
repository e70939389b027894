"""clip-retrieval's embedding layout (what its `clip_inference` writes), read by embedding-reader, autofaiss and
clip-retrieval's index and back end (`visfeat export --format embedding-reader STORE OUT`):

    OUT/img_emb/img_emb_{i}.npy          (n_i, D) one row per image of part i
    OUT/metadata/metadata_{i}.parquet    the same rows in the same order: image_path (clip-retrieval's name for
                                         the file column; the store's path, relative to the dataset root), image_id
    OUT/text_emb/text_emb_{i}.npy        a text store (engine/text.py): one row per caption, and its metadata
                                         caption (clip-retrieval's column), image_id, caption_id

An image store of a tar source read from local disk (webdataset, urls: img2dataset's tars) exported with
`manifest` (`--manifest`, the dataset's manifest.parquet) gains the metadata columns clip-retrieval's inference
writes for such tars and its back end returns: `caption` (the sample's .txt member) and `url` (its .json member's
"url"), each null where the sample has none (an empty .txt counts as none: the tar scan does not tell them apart).
A row's tar is the first component of its image_path ("<tar file name>/<member>"), and each part scans only the
tars its rows name (memory: one part's samples, not the dataset's). Every part's metadata is built, in a temporary
local folder ($TMPDIR), before any file is written, so a row whose image is in none of those tars (another
dataset's manifest, tars changed since the extraction) fails the export with nothing written. Tars in object
storage (a manifest whose root is s3://) are refused: stage them and give a manifest whose root is the local copy.
A text store refuses `manifest`: it carries its captions already.

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

import contextlib
import json
import os
import re
import shutil
import tempfile
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
TAR_COLUMNS = ("caption", "url")  # what a tar source's manifest adds to an image store's metadata, as
# clip-retrieval names them (its inference over webdataset tars: the .txt member, the .json member's keys)


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


def _write_parquet(fh: Writable, src: Source, a: int, b: int, chunk: int,
                   extra: dict[str, list[str | None]] | None = None) -> None:
    """Rows a..b's metadata; `extra`: more columns, one value per row a..b (null: None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    extra = extra or {}
    schema = pa.schema([(k, pa.string()) for k in [*src.meta, *extra]])
    with pq.ParquetWriter(pa.PythonFile(fh, mode="w"), schema) as w:
        for c in range(a, b, chunk):
            e = min(b, c + chunk)
            cols = {k: ds.asstr()[c:e].tolist() for k, ds in src.meta.items()}
            cols.update({k: v[c - a:e - a] for k, v in extra.items()})
            w.write_table(pa.table(cols, schema=schema))


def tar_manifest_tars(manifest: str) -> set[str]:
    """The tar file names a tar source's manifest lists (what a store's image_path starts with); a manifest of
    another kind, or of tars in object storage, is a ValueError naming it."""
    import pyarrow.parquet as pq

    from visfeat.sources.manifest import manifest_root

    try:
        names = pq.read_schema(manifest).names
    except (OSError, ValueError) as e:  # absent, or not parquet (pyarrow's ArrowInvalid is a ValueError)
        raise ValueError(f"embedding-reader: --manifest {manifest}: not a readable manifest ({e})") from None
    if "tar" not in names:
        raise ValueError(f"embedding-reader: --manifest {manifest} is not a tar source's manifest (webdataset or "
                         f"urls: one row per tar; it has columns {', '.join(names)}): captions and urls are read "
                         f"from a tar source's samples")
    root = manifest_root(manifest) or ""
    if "://" in root:  # the export reads tars from disk; a job stages remote ones, an export does not
        raise ValueError(f"embedding-reader: --manifest {manifest} names tars in object storage ({root}): stage "
                         f"them and give a manifest whose root is the local copy")
    return {os.path.basename(t) for t in pq.read_table(manifest, columns=["tar"]).column("tar").to_pylist()}


def _url(js: str) -> str | None:
    """The "url" of a sample's json member; None without one (no member, no key, not a JSON object)."""
    try:
        meta = json.loads(js) if js else None
    except ValueError:
        return None
    url = meta.get("url") if isinstance(meta, dict) else None
    return None if url is None else str(url)


def _tar_meta(path: str, manifest: str, listed: set[str], ids: list[str], paths: list[str],
              first_row: int) -> dict[str, list[str | None]]:
    """caption and url of one part's rows (`ids`, `paths`, rows from `first_row` of the store at `path`), joined
    by image id with the samples of the tars the rows' paths name: only those tars are scanned."""
    from visfeat.sources.tars import scan_manifest_tars

    tars = {p.split("/", 1)[0] for p in paths}
    unlisted = sorted(tars - listed)
    if unlisted:
        k = next(k for k, p in enumerate(paths) if p.split("/", 1)[0] == unlisted[0])
        raise ValueError(f"embedding-reader: {path} row {first_row + k} (image {ids[k]!r}, {paths[k]}) names tar "
                         f"{unlisted[0]!r}, which --manifest {manifest} does not list ({len(unlisted)} such tars "
                         f"in this part): is it the manifest of this store's dataset?")
    df = scan_manifest_tars(manifest, tars)
    ok = df[df["error"] == ""]  # samples with an image: the only ones a store row can be
    found = dict(zip(ok["image_id"], zip(ok["txt"], ok["json"])))
    captions: list[str | None] = []
    urls: list[str | None] = []
    for k, image_id in enumerate(ids):
        sample = found.get(image_id)
        if sample is None:
            broken = df[df["error"].str.startswith(("unreadable tar", "truncated tar"))]
            why = "".join(f"; {t}: {e}" for t, e in zip(broken["image_id"], broken["error"]))
            raise ValueError(f"embedding-reader: {path} row {first_row + k} (image {image_id!r}, {paths[k]}) is "
                             f"not a sample of its tar {paths[k].split('/', 1)[0]} (--manifest {manifest}){why}")
        txt, js = sample
        captions.append(txt or None)
        urls.append(_url(js))
    return dict(zip(TAR_COLUMNS, (captions, urls)))


PART = re.compile(r"(img|text)_emb_\d+\.npy|metadata_\d+\.parquet")


def export_embedding_reader(path: str, out: str, field: str = "global", part_rows: int = PART_ROWS,
                            dtype: str = "float16", normalize: bool = True, manifest: str | None = None) -> int:
    """Write the store's vectors at `path` in clip-retrieval's layout under `out` (a folder or s3://bucket/prefix);
    returns the rows written. `manifest`: a tar source's manifest, whose samples give each image row its caption
    and url."""
    if dtype not in DTYPES:
        raise ValueError(f"embedding-reader: --dtype is one of {', '.join(DTYPES)}, not {dtype!r}")
    if part_rows < 1:
        raise ValueError(f"embedding-reader: --part-rows must be at least 1, not {part_rows}")
    if manifest is not None and is_text_store(path):
        raise ValueError(f"embedding-reader: --manifest adds the captions and urls of an image store's tars; "
                         f"{path} is a text store, whose metadata carries its captions already")
    listed = tar_manifest_tars(manifest) if manifest is not None else set()
    src = _source(path, field)
    dest = destination(out)
    other = "text" if src.kind == "img" else "img"
    if any(PART.fullmatch(f) for f in dest.list(f"{other}_emb")):
        raise ValueError(f"embedding-reader: {out} holds {other}_emb/ of another export, whose rows metadata/ "
                         f"describes: export to another folder")
    n = src.vectors.shape[0]
    chunk = max(1, CHUNK_BYTES // (4 * max(1, src.vectors.shape[1])))
    names = part_names(src.kind, -(-n // part_rows))
    bounds = [(i * part_rows, min(n, (i + 1) * part_rows)) for i in range(len(names))]
    staging = tempfile.TemporaryDirectory(prefix="visfeat-export-") if manifest is not None else None
    with staging or contextlib.nullcontext() as tmp:
        built: list[str | None] = [None] * len(names)
        if manifest is not None:  # every part's metadata before any file is written: a missing image writes nothing
            for i, (a, b) in enumerate(bounds):
                built[i] = os.path.join(tmp, f"{i}.parquet")
                extra = _tar_meta(path, manifest, listed, src.meta[IMAGE_ID].asstr()[a:b].tolist(),
                                  src.meta["image_path"].asstr()[a:b].tolist(), a)
                with open(built[i], "wb") as fh:
                    _write_parquet(fh, src, a, b, chunk, extra)
        for (npy, parquet), (a, b), meta in zip(names, bounds, built):
            with dest.open(npy) as fh:
                _write_npy(fh, src, a, b, dtype, normalize, chunk)
            with dest.open(parquet) as fh:
                if meta is None:
                    _write_parquet(fh, src, a, b, chunk)
                else:
                    with open(meta, "rb") as f:
                        shutil.copyfileobj(f, fh, 8 << 20)
    written = {p for pair in names for p in pair}
    for sub in (f"{src.kind}_emb", "metadata"):
        for f in dest.list(sub):
            if PART.fullmatch(f) and f"{sub}/{f}" not in written:
                dest.remove(f"{sub}/{f}")
    return n
