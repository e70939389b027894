"""Exporters: write a store in layouts that downstream code already reads.

Available:
- `xmodaler-npz` (OpenAI-CLIP-Feature / X-modaler): one `<image_id>.npz` per image with `features` (cells, C)
  float32, row-major over the grid, and `g_feature` (1, D).
- `lxmert-h5` (IGLUE / VL-T5 `{split}_boxes36.h5`): OUT is one HDF5 file with a group per image id holding
  features (K, D) float32, boxes (K, 4) float32, obj_id int64, obj_conf float32, attr_id int64, attr_conf
  float32, img_h, img_w scalars (no num_boxes, as iglue writes it).
- `lxmert-tsv` (LXMERT `*_obj36.tsv`, read by its `load_obj_tsv`): OUT is one TSV, columns img_id, img_h, img_w,
  objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features; arrays as base64 of the raw
  int64 / float32 bytes. A store without attributes exports zeros there, as LXMERT's own script does.
- `vissl-npy` (VISSL extract_features): OUT is a folder of `rank0_chunk0_{split}_{layer}_{features,targets,inds}.npy`
  per fixed float field (`--split`, default train); see visfeat/vissl_features.py.
- `mmf-npy` (MMF extract_features_vmb.py / extract_features_vinvl.py, read by MMF's
  PaddedFasterRCNNFeatureReader): OUT is a folder with `<image_id>.npy` + `<image_id>_info.npy` (a pickled dict)
  per image. VMB flavour (a store without attribute lists): features (K, D); info bbox (K, 4) original pixels,
  num_boxes, objects (K,) 0-based, cls_prob (K, C) without the background column, image_width, image_height.
  VinVL flavour (a store with `attr_ids`): features (K, D + 6) = MMF's 2054-d (the region feature then
  x1/w, y1/h, x2/w, y2/h, (x2-x1)/w, (y2-y1)/h); info labels (1-based), scores, box_features (K, D),
  attr_labels / attr_scores (K, 16) (1-based, 0 with score 0 where the box has fewer attributes), bbox (K, 6)
  normalised, image_width, image_height, and scores_all when the store kept cls_prob. MMF's boxes_all and
  attr_feature are not stored by visfeat, so not exported.
- `xlxmert-boxes36` (X-LXMERT `{backbone}_{split}_boxes36.h5`): OUT is one HDF5 file with a group per image id
  holding features (K, D) float32, obj_id, boxes (K, 4) original pixels, img_w, img_h.
- `xlxmert-grid8` (X-LXMERT `{backbone}_{split}_grid8.h5`): OUT is one HDF5 file with a group per image id
  holding `features` (8, 8, D) float32.
- `embedding-reader` (clip-retrieval's img_emb/ + metadata/ npy and parquet parts, read by embedding-reader and
  autofaiss): OUT is a folder or s3://bucket/prefix; one vector per image (a fixed 1-D field, `global` by default)
  or per caption of a text store; see visfeat/interop/retrieval.py.
A store that is not what a layout's readers read is refused before anything is written, in one line naming
what they expect and what the store holds (`_refuse`): X-LXMERT reads exactly its grid and box shapes, LXMERT and
MMF read regions, X-modaler a grid and a global vector.
Images are named by their store id, or with `names="stem"` (`visfeat export --names stem`) by their image file's
stem, as the originals name them: LXMERT's and X-LXMERT's COCO files say COCO_val2014_000000000042 where the
registry's `coco` id is 42 (the importers' `id_style` undoes it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from visfeat.interop import retrieval
from visfeat.store.format import Attr, offsets_name
from visfeat.store.reader import FeatureStore, iter_rows

# allenai/x-lxmert x-lxmert/src/param.py: --grid_size 8, --n_boxes 36, --feat_dim 2048. Its datasets
# (src/tasks/vqa_data.py) read each image's features with read_direct into arrays of exactly these shapes.
XLXMERT_GRID = 8
XLXMERT_BOXES = 36
XLXMERT_DIM = 2048
XLXMERT_GRID_PRESET = "grid8-x152"  # X-LXMERT's feature_extraction/coco_extract_grid_feature.py


def _has(store: FeatureStore) -> str:
    """What a store holds, for a refusal: its preset and fields."""
    preset = store.attrs.get(Attr.PRESET) or "imported, no preset"
    return f"{store.path} ({preset}) holds {', '.join(s.name for s in store.specs)}"


def _refuse(fmt: str, expects: str, has: str) -> ValueError:
    return ValueError(f"{fmt}: {expects}; {has}")


def _fixed(store: FeatureStore, name: str, dims: int):
    """The spec of a fixed (not ragged) field `name` of `dims` dimensions, or None."""
    return next((s for s in store.specs if s.name == name and len(s.shape) == dims and not s.ragged), None)


def export_xmodaler_npz(path: str, out: str, names: str = "id") -> int:
    store = FeatureStore(path)
    if _fixed(store, "grid", 3) is None or _fixed(store, "global", 1) is None:
        raise _refuse("xmodaler-npz", "X-modaler reads a fixed grid and global (a CLIP or effnet store)", _has(store))
    Path(out).mkdir(parents=True, exist_ok=True)
    n = 0
    for ids, _, _, fields, _ in named_rows(store, names):
        for k, image_id in enumerate(ids):
            grid = fields["grid"][k].astype(np.float32)
            dest = Path(out) / f"{image_id}.npz"
            dest.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(dest, features=grid.reshape(-1, grid.shape[-1]),
                                g_feature=fields["global"][k].astype(np.float32)[None])
            n += 1
    return n


def named_rows(store: FeatureStore, names: str = "id"):
    """`iter_rows` with each image named by its store id (`names="id"`), or by its image file's stem
    (`names="stem"`: COCO_val2014_000000000042 where a `coco` id is 42), as the originals name their outputs
    (LXMERT's img_id, X-LXMERT's groups, MMF's file names). Imported stores have no file names: their ids stay."""
    if names not in ("id", "stem"):
        raise ValueError(f"names: 'id' or 'stem', not {names!r}")
    seen: dict[str, str] = {}
    for ids, paths, hw, fields, counts in iter_rows(store):
        if names == "stem":
            ids = [Path(p).stem if p else i for i, p in zip(ids, paths)]
            for i, p in zip(ids, paths):
                if seen.setdefault(i, p) != p:
                    raise ValueError(f"{store.path}: {seen[i]!r} and {p!r} have one file stem {i!r}: export by id")
        yield ids, paths, hw, fields, counts


def per_image(store: FeatureStore, names: str = "id"):
    """(name, (h, w), fields of that image) for every row, streamed in chunks; ragged fields split."""
    for ids, _, hw, fields, counts in named_rows(store, names):
        starts = {g: np.concatenate([[0], np.cumsum(c)]) for g, c in counts.items()}
        for k, image_id in enumerate(ids):
            one = {}
            for s in store.specs:
                if s.ragged:
                    a = starts[s.ragged]
                    one[s.name] = fields[s.name][a[k]:a[k + 1]]
                else:
                    one[s.name] = fields[s.name][k]
            yield image_id, (int(hw[k][0]), int(hw[k][1])), one


def _regions(path: str, fmt: str, reader: str,
             need: tuple[str, ...] = ("features", "boxes", "obj_id", "obj_conf")) -> FeatureStore:
    """The store, when it holds the region fields `need` (a detector preset's store)."""
    store = FeatureStore(path)
    if not set(need) <= {s.name for s in store.specs}:
        raise _refuse(fmt, f"{reader} reads regions ({', '.join(need)}: a detector preset's store)", _has(store))
    return store


def _region_arrays(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    k = len(f["boxes"])
    return {
        "features": f["features"].astype(np.float32), "boxes": f["boxes"].astype(np.float32),
        "obj_id": f["obj_id"].astype(np.int64), "obj_conf": f["obj_conf"].astype(np.float32),
        "attr_id": f["attr_id"].astype(np.int64) if "attr_id" in f else np.zeros(k, np.int64),
        "attr_conf": f["attr_conf"].astype(np.float32) if "attr_conf" in f else np.zeros(k, np.float32),
    }


def export_lxmert_h5(path: str, out: str, names: str = "id") -> int:
    import h5py

    store = _regions(path, "lxmert-h5", "LXMERT")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    n = 0
    with h5py.File(tmp, "w") as h:
        for image_id, (ih, iw), f in per_image(store, names):
            g = h.create_group(image_id)
            for k, v in _region_arrays(f).items():
                g.create_dataset(k, data=v)
            g["img_h"], g["img_w"] = ih, iw
            n += 1
    tmp.replace(out)
    return n


TSV_FIELDS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
              "boxes", "features")  # LXMERT src/utils.py FIELDNAMES


def export_lxmert_tsv(path: str, out: str, names: str = "id") -> int:
    import base64
    import csv

    def b64(a: np.ndarray) -> str:
        return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()

    store = _regions(path, "lxmert-tsv", "LXMERT")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    n = 0
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=TSV_FIELDS, delimiter="\t")
        for image_id, (ih, iw), f in per_image(store, names):
            r = _region_arrays(f)
            w.writerow({"img_id": image_id, "img_h": ih, "img_w": iw, "objects_id": b64(r["obj_id"]),
                        "objects_conf": b64(r["obj_conf"]), "attrs_id": b64(r["attr_id"]),
                        "attrs_conf": b64(r["attr_conf"]), "num_boxes": len(r["boxes"]), "boxes": b64(r["boxes"]),
                        "features": b64(r["features"])})
            n += 1
    tmp.replace(out)
    return n


def export_vissl_npy(path: str, out: str, split: str = "train") -> int:
    """VISSL extract_features layout (visfeat/vissl_features.py): OUT is a folder of
    rank0_chunk0_{split}_{layer}_{features,targets,inds}.npy per fixed float field, read by VISSL's
    ExtractedFeaturesLoader (and ours)."""
    from visfeat.interop.vissl_features import export_vissl_npy as _export

    return _export(path, out, split=split)


def box_geometry(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """MMF extract_features_vinvl.py _norm_box: (K, 6) x1/w, y1/h, x2/w, y2/h, then normalised width, height."""
    out = np.zeros((len(boxes), 6), np.float32)
    out[:, :4] = boxes
    out[:, [0, 2]] /= w
    out[:, [1, 3]] /= h
    out[:, 4] = out[:, 2] - out[:, 0]
    out[:, 5] = out[:, 3] - out[:, 1]
    return out


def _foreground(cls_prob: np.ndarray, store: FeatureStore) -> np.ndarray:
    """Drop the background column: first for maskrcnn-benchmark models (`legacy`), last for detectron2's."""
    legacy = bool(store.config.get("legacy", False))
    return cls_prob[:, 1:] if legacy else cls_prob[:, :-1]


def export_mmf_npy(path: str, out: str, names: str = "id") -> int:
    store = _regions(path, "mmf-npy", "MMF")
    vinvl = "attr_ids" in {s.name for s in store.specs}
    Path(out).mkdir(parents=True, exist_ok=True)
    n = 0
    for image_id, (ih, iw), f in per_image(store, names):
        feats = f["features"].astype(np.float32)
        boxes = f["boxes"].astype(np.float32)
        if vinvl:
            geo = box_geometry(boxes, iw, ih)
            info = {"labels": f["obj_id"].astype(np.int64) + 1, "scores": f["obj_conf"].astype(np.float32),
                    "box_features": feats, "attr_labels": np.where(f["attr_ids"] >= 0, f["attr_ids"] + 1, 0),
                    "attr_scores": f["attr_confs"].astype(np.float32), "bbox": geo,
                    "image_width": iw, "image_height": ih}
            if "cls_prob" in f:
                info["scores_all"] = f["cls_prob"].astype(np.float32)
            feats = np.concatenate([feats, geo], 1)
        else:
            info = {"bbox": boxes, "num_boxes": int(f["num_boxes"]), "objects": f["obj_id"].astype(np.int64),
                    "image_width": iw, "image_height": ih}
            if "cls_prob" in f:
                info["cls_prob"] = _foreground(f["cls_prob"].astype(np.float32), store)
        dest = Path(out) / f"{image_id}.npy"
        dest.parent.mkdir(parents=True, exist_ok=True)
        np.save(dest, feats)
        np.save(dest.with_name(f"{Path(image_id).name}_info.npy"), info)
        n += 1
    return n


def export_xlxmert_boxes36(path: str, out: str, names: str = "id") -> int:
    import h5py

    store = _regions(path, "xlxmert-boxes36", "X-LXMERT", ("features", "boxes", "obj_id"))
    _check_xlxmert_boxes(store)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    n = 0
    with h5py.File(tmp, "w") as h:
        for image_id, (ih, iw), f in per_image(store, names):
            g = h.create_group(image_id)  # coco_extract_bbox_feature.py's datasets, in its order
            g["features"] = f["features"].astype(np.float32)
            g["obj_id"] = f["obj_id"].astype(np.int64)
            g["boxes"] = f["boxes"].astype(np.float32)
            g["img_w"], g["img_h"] = iw, ih
            n += 1
    tmp.replace(out)
    return n


def _check_xlxmert_boxes(store: FeatureStore) -> None:
    """X-LXMERT reads XLXMERT_BOXES boxes of XLXMERT_DIM features per image, exactly."""
    expects = f"X-LXMERT reads {XLXMERT_BOXES} boxes x {XLXMERT_DIM} features per image (--n_boxes, --feat_dim)"
    spec = next(s for s in store.specs if s.name == "features")
    if spec.shape != (XLXMERT_DIM,):
        raise _refuse("xlxmert-boxes36", expects,
                      f"{_has(store)}; its features are (K, {', '.join(map(str, spec.shape))}) per image")
    counts = np.diff(store.h5[offsets_name(spec.ragged)][()])
    off = counts != XLXMERT_BOXES
    if off.any():
        raise _refuse("xlxmert-boxes36", expects, f"{_has(store)}; {int(off.sum())} of {len(counts)} images have "
                      f"another count ({counts.min()} to {counts.max()} boxes)")


def _check_xlxmert_grid(store: FeatureStore) -> None:
    """X-LXMERT reads an XLXMERT_GRID x XLXMERT_GRID x XLXMERT_DIM grid per image, as grid8-x152 computes it."""
    want = (XLXMERT_GRID, XLXMERT_GRID, XLXMERT_DIM)
    expects = f"X-LXMERT reads an {'x'.join(map(str, want))} grid per image (preset {XLXMERT_GRID_PRESET})"
    spec = _fixed(store, "grid", 3)
    if spec is None:
        raise _refuse("xlxmert-grid8", expects, f"{_has(store)} (no fixed h x w x C grid)")
    if spec.shape != want:
        raise _refuse("xlxmert-grid8", expects, f"{_has(store)}; its grid is {'x'.join(map(str, spec.shape))}")
    preset = store.attrs.get(Attr.PRESET) or ""
    if preset not in ("", XLXMERT_GRID_PRESET):  # imported stores name no preset: their shape is what is known
        raise _refuse("xlxmert-grid8", f"X-LXMERT's grid features are {XLXMERT_GRID_PRESET}'s (fc6 of the VMB X-152 "
                      f"over an 8x8 grid of boxes)", f"{_has(store)}: other features of that shape; extract with "
                      f"--preset {XLXMERT_GRID_PRESET}")


def export_xlxmert_grid8(path: str, out: str, names: str = "id") -> int:
    import h5py

    store = FeatureStore(path)
    _check_xlxmert_grid(store)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    n = 0
    with h5py.File(tmp, "w") as h:
        for ids, _, _, fields, _ in named_rows(store, names):
            for k, image_id in enumerate(ids):
                h.create_group(image_id)["features"] = fields["grid"][k].astype(np.float32)
                n += 1
    tmp.replace(out)
    return n


def export_embedding_reader(path: str, out: str, field: str = "global", part_rows: int = retrieval.PART_ROWS,
                            dtype: str = "float16", normalize: bool = True, manifest: str | None = None) -> int:
    """clip-retrieval's layout (interop/retrieval.py) of a text store, or of an image store's fixed 1-D `field`."""
    if not retrieval.is_text_store(path):
        store = FeatureStore(path)
        if _fixed(store, field, 1) is None:
            raise _refuse("embedding-reader", f"clip-retrieval's layout holds one vector per image (a fixed 1-D "
                          f"field: {field!r}; --field names another)", _has(store))
        store.close()
    return retrieval.export_embedding_reader(path, out, field=field, part_rows=part_rows, dtype=dtype,
                                             normalize=normalize, manifest=manifest)


EXPORTERS = {"xmodaler-npz": export_xmodaler_npz, "lxmert-h5": export_lxmert_h5, "lxmert-tsv": export_lxmert_tsv,
             "vissl-npy": export_vissl_npy, "mmf-npy": export_mmf_npy,
             "xlxmert-boxes36": export_xlxmert_boxes36, "xlxmert-grid8": export_xlxmert_grid8,
             "embedding-reader": export_embedding_reader}
SPLIT_FORMATS = ("vissl-npy",)  # formats whose file names carry a split (`visfeat export --split`)
VECTOR_FORMATS = ("embedding-reader",)  # one vector per row, in parts: `--field`, `--part-rows`, `--dtype`,
# `--no-normalize`, `--manifest`; rows keep the store's ids, so `--names` does not apply


def export(fmt: str, path: str, out: str, split: str | None = None, names: str = "id", **vectors) -> int:
    """Export the store at `path` as `fmt` to `out`; `vectors`: the VECTOR_FORMATS' options (field, part_rows,
    dtype, normalize, manifest)."""
    if fmt not in EXPORTERS:
        raise ValueError(f"unknown export format {fmt!r}; available: {', '.join(EXPORTERS)}")
    if fmt in VECTOR_FORMATS:
        if split is not None or names != "id":
            raise ValueError(f"{fmt} writes rows with their store ids: --split and --names do not apply")
        return EXPORTERS[fmt](path, out, **vectors)
    if vectors:
        raise ValueError(f"--{next(iter(vectors)).replace('_', '-')} applies to {', '.join(VECTOR_FORMATS)}, "
                         f"not {fmt}")
    if fmt in SPLIT_FORMATS:  # images are rows (inds), not names
        if names != "id":
            raise ValueError(f"{fmt} names no images (it writes row indices): --names does not apply")
        return EXPORTERS[fmt](path, out) if split is None else EXPORTERS[fmt](path, out, split=split)
    if split is not None:
        raise ValueError(f"--split applies to {', '.join(SPLIT_FORMATS)}, not {fmt}")
    return EXPORTERS[fmt](path, out, names=names)
