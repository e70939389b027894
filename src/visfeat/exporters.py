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
The grid layouts (mmf-npy, xlxmert-grid8) arrive with the presets that produce them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .store import FeatureStore, iter_rows


def export_xmodaler_npz(path: str, out: str) -> int:
    store = FeatureStore(path)
    names = {s.name for s in store.specs}
    if not {"grid", "global"} <= names:
        raise ValueError(f"xmodaler-npz needs fields grid and global; {path} has {sorted(names)}")
    Path(out).mkdir(parents=True, exist_ok=True)
    n = 0
    for ids, _, _, fields, _ in iter_rows(store):
        for k, image_id in enumerate(ids):
            grid = fields["grid"][k].astype(np.float32)
            dest = Path(out) / f"{image_id}.npz"
            dest.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(dest, features=grid.reshape(-1, grid.shape[-1]),
                                g_feature=fields["global"][k].astype(np.float32)[None])
            n += 1
    return n


def per_image(store: FeatureStore):
    """(image_id, (h, w), fields of that image) for every row, streamed in chunks; ragged fields split."""
    for ids, _, hw, fields, counts in iter_rows(store):
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


def _regions(path: str, fmt: str) -> FeatureStore:
    store = FeatureStore(path)
    names = {s.name for s in store.specs}
    if not {"features", "boxes", "obj_id", "obj_conf"} <= names:
        raise ValueError(f"{fmt} needs a region store (features, boxes, obj_id, obj_conf); {path} has {sorted(names)}")
    return store


def _region_arrays(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    k = len(f["boxes"])
    return {
        "features": f["features"].astype(np.float32), "boxes": f["boxes"].astype(np.float32),
        "obj_id": f["obj_id"].astype(np.int64), "obj_conf": f["obj_conf"].astype(np.float32),
        "attr_id": f["attr_id"].astype(np.int64) if "attr_id" in f else np.zeros(k, np.int64),
        "attr_conf": f["attr_conf"].astype(np.float32) if "attr_conf" in f else np.zeros(k, np.float32),
    }


def export_lxmert_h5(path: str, out: str) -> int:
    import h5py

    store = _regions(path, "lxmert-h5")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    n = 0
    with h5py.File(tmp, "w") as h:
        for image_id, (ih, iw), f in per_image(store):
            g = h.create_group(image_id)
            for k, v in _region_arrays(f).items():
                g.create_dataset(k, data=v)
            g["img_h"], g["img_w"] = ih, iw
            n += 1
    tmp.replace(out)
    return n


TSV_FIELDS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
              "boxes", "features")  # LXMERT src/utils.py FIELDNAMES


def export_lxmert_tsv(path: str, out: str) -> int:
    import base64
    import csv

    def b64(a: np.ndarray) -> str:
        return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()

    store = _regions(path, "lxmert-tsv")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    n = 0
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=TSV_FIELDS, delimiter="\t")
        for image_id, (ih, iw), f in per_image(store):
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
    from .vissl_features import export_vissl_npy as _export

    return _export(path, out, split=split)


EXPORTERS = {"xmodaler-npz": export_xmodaler_npz, "lxmert-h5": export_lxmert_h5, "lxmert-tsv": export_lxmert_tsv,
             "vissl-npy": export_vissl_npy}
PLANNED = ("mmf-npy", "xlxmert-grid8")
SPLIT_FORMATS = ("vissl-npy",)  # formats whose file names carry a split (`visfeat export --split`)


def export(fmt: str, path: str, out: str, split: str | None = None) -> int:
    if fmt not in EXPORTERS:
        extra = f" ({fmt} comes with the region/grid presets, not yet available)" if fmt in PLANNED else ""
        raise ValueError(f"unknown export format {fmt!r}{extra}; available: {', '.join(EXPORTERS)}")
    if split is not None:
        if fmt not in SPLIT_FORMATS:
            raise ValueError(f"--split applies to {', '.join(SPLIT_FORMATS)}, not {fmt}")
        return EXPORTERS[fmt](path, out, split=split)
    return EXPORTERS[fmt](path, out)
