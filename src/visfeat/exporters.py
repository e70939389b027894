"""Exporters: write a store in layouts that downstream code already reads.

Available: `xmodaler-npz` (OpenAI-CLIP-Feature / X-modaler: one `<image_id>.npz` per image with `features`
(cells, C) float32, row-major over the grid, and `g_feature` (1, D)). The region and grid layouts (lxmert-h5,
lxmert-tsv, mmf-npy, xlxmert-grid8, vissl-npy) arrive with the presets that produce them.
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


EXPORTERS = {"xmodaler-npz": export_xmodaler_npz}
PLANNED = ("lxmert-h5", "lxmert-tsv", "mmf-npy", "xlxmert-grid8", "vissl-npy")


def export(fmt: str, path: str, out: str) -> int:
    if fmt not in EXPORTERS:
        extra = f" ({fmt} comes with the region/grid presets, not yet available)" if fmt in PLANNED else ""
        raise ValueError(f"unknown export format {fmt!r}{extra}; available: {', '.join(EXPORTERS)}")
    return EXPORTERS[fmt](path, out)
