"""Importers: published feature files into the feature store; each the inverse of the matching exporter.

- `lxmert-h5`: IGLUE / VL-T5 `{split}_boxes36.h5` (a group per image: features, boxes, obj_id, obj_conf,
  attr_id, attr_conf, img_h, img_w).
- `lxmert-tsv`: LXMERT's base64 TSV (img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf,
  num_boxes, boxes, features).
- `xlxmert-boxes36`: X-LXMERT `{backbone}_{split}_boxes36.h5` (a group per image: features (36, D), obj_id,
  boxes in original pixels, img_h, img_w; no confidences or attributes).
- `xlxmert-grid8`: X-LXMERT `{backbone}_{split}_grid8.h5` (a group per image: features (8, 8, D)); the
  layout has no image sizes, so `image_hw` is (0, 0).
Streamed in chunks of images (memory bounded by the chunk, not the file). The source file's name, size and
sha256 are recorded in the store's attributes. These layouts carry no image paths: `image_path` is empty. Ids are
made by the dataset's `id_style` from the file's (file stems), as the manifest makes them from file names.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from visfeat.version import __version__
from visfeat.store.format import Attr, FieldSpec
from visfeat.store.writer import writing

_REGION_FIELDS = (("obj_id", "int64"), ("obj_conf", "float32"), ("attr_id", "int64"), ("attr_conf", "float32"))


def _region_specs(dim: int, names: tuple[str, ...]) -> list[FieldSpec]:
    return ([FieldSpec("features", (dim,), ragged="regions"), FieldSpec("boxes", (4,), ragged="regions")]
            + [FieldSpec(n, (), t, ragged="regions") for n, t in _REGION_FIELDS if n in names]
            + [FieldSpec("num_boxes", (), "int64")])


def _h5_rows(path: str) -> Iterator[tuple[str, tuple[int, int], dict[str, np.ndarray]]]:
    import h5py

    with h5py.File(path, "r") as f:
        for image_id in f:
            g = f[image_id]
            yield image_id, (int(g["img_h"][()]), int(g["img_w"][()])), {
                k: g[k][()] for k in ("features", "boxes", "obj_id", "obj_conf", "attr_id", "attr_conf")}


def _tsv_rows(path: str) -> Iterator[tuple[str, tuple[int, int], dict[str, np.ndarray]]]:
    import base64
    import csv
    import sys

    from visfeat.interop.exporters import TSV_FIELDS

    csv.field_size_limit(sys.maxsize)
    with open(path, newline="") as fh:
        for item in csv.DictReader(fh, TSV_FIELDS, delimiter="\t"):
            k = int(item["num_boxes"])

            def dec(key, dtype, shape):
                return np.frombuffer(base64.b64decode(item[key]), dtype=dtype).reshape(shape)

            yield item["img_id"], (int(item["img_h"]), int(item["img_w"])), {
                "features": dec("features", np.float32, (k, -1)), "boxes": dec("boxes", np.float32, (k, 4)),
                "obj_id": dec("objects_id", np.int64, (k,)), "obj_conf": dec("objects_conf", np.float32, (k,)),
                "attr_id": dec("attrs_id", np.int64, (k,)), "attr_conf": dec("attrs_conf", np.float32, (k,))}


def _boxes36_rows(path: str) -> Iterator[tuple[str, tuple[int, int], dict[str, np.ndarray]]]:
    import h5py

    with h5py.File(path, "r") as f:
        for image_id in f:
            g = f[image_id]
            yield image_id, (int(g["img_h"][()]), int(g["img_w"][()])), {
                k: g[k][()] for k in ("features", "boxes", "obj_id")}


def _grid8_rows(path: str) -> Iterator[tuple[str, tuple[int, int], dict[str, np.ndarray]]]:
    import h5py

    with h5py.File(path, "r") as f:
        for image_id in f:
            yield image_id, (0, 0), {"grid": f[image_id]["features"][()]}


READERS = {"lxmert-h5": _h5_rows, "lxmert-tsv": _tsv_rows, "xlxmert-boxes36": _boxes36_rows,
           "xlxmert-grid8": _grid8_rows}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def import_features(fmt: str, src: str, out: str, preset: str = "", source_url: str = "", chunk: int = 256,
                    id_style: str = "path") -> int:
    """`src` in layout `fmt` -> the store `out`; returns the number of images. `id_style` is the dataset's, so
    the store's ids are those an extraction of the same dataset gives (LXMERT's and X-LXMERT's COCO files name
    images by file stem, COCO_val2014_000000000042, where `coco` ids are 42)."""
    if fmt not in READERS:
        raise ValueError(f"unknown import format {fmt!r}; available: {', '.join(READERS)}")
    rows = _with_ids(READERS[fmt](src), id_style, src)
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{src}: no images in this {fmt} file")
    grid = fmt == "xlxmert-grid8"
    specs = ([FieldSpec("grid", tuple(first[2]["grid"].shape))] if grid
             else _region_specs(first[2]["features"].shape[1], tuple(first[2])))
    attrs = {Attr.PRESET: preset, Attr.EXTRACTOR: preset or fmt, Attr.CONFIG: json.dumps({"imported_from": fmt}),
             Attr.WEIGHTS_SHA256: "", Attr.VISFEAT_VERSION: __version__,
             Attr.SOURCE_FILE: Path(src).name, Attr.SOURCE_URL: source_url, Attr.SOURCE_SHA256: _sha256(src),
             Attr.SOURCE_BYTES: Path(src).stat().st_size}
    n = 0
    with writing(out, specs, attrs) as w:
        buf: list = [first]
        for row in rows:
            buf.append(row)
            if len(buf) == chunk:
                n += (_flush_grid if grid else _flush)(w, buf)
                buf = []
        if buf:
            n += (_flush_grid if grid else _flush)(w, buf)
    return n


def _with_ids(rows, style: str, src: str):
    """The file's image ids (file stems) as the dataset's `id_style` makes them; two files' ids meeting is an error."""
    from visfeat.sources.folder import DatasetError, id_for

    seen: dict[str, str] = {}
    for file_id, hw, fields in rows:
        image_id = id_for(file_id, "coco") if style == "coco" else file_id
        if seen.setdefault(image_id, file_id) != file_id:
            raise DatasetError(f"{src}: {seen[image_id]!r} and {file_id!r} both give image id {image_id!r} "
                               f"under id_style {style}")
        yield image_id, hw, fields


def _flush_grid(w, buf) -> int:
    w.append([r[0] for r in buf], [""] * len(buf), np.asarray([r[1] for r in buf], np.int32),
             {"grid": np.stack([r[2]["grid"] for r in buf]).astype(np.float32)}, {})
    return len(buf)


def _flush(w, buf) -> int:
    fields = {name: np.concatenate([r[2][name] for r in buf]) for name in buf[0][2]}
    fields["features"] = fields["features"].astype(np.float32)
    fields["boxes"] = fields["boxes"].astype(np.float32)
    fields["obj_id"] = fields["obj_id"].astype(np.int64)
    counts = np.asarray([len(r[2]["boxes"]) for r in buf], np.int64)
    fields["num_boxes"] = counts
    w.append([r[0] for r in buf], [""] * len(buf), np.asarray([r[1] for r in buf], np.int32), fields,
             {"regions": counts})
    return len(buf)
