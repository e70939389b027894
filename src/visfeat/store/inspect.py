"""`visfeat inspect`: a human summary of a feature or text store."""
from __future__ import annotations

import json
from collections import Counter

import h5py
import numpy as np

from visfeat.store.format import FAILED, FAILED_ID, FAILED_REASON, IMAGE_ID, IMAGE_PATH, Attr, decoded_attrs, is_virtual

_SHOWN = (Attr.PRESET, Attr.EXTRACTOR, Attr.WEIGHTS_SHA256, Attr.VISFEAT_VERSION, Attr.CREATED, Attr.STORAGE_DTYPE,
          Attr.COMPRESSION)


def describe(path: str) -> str:
    with h5py.File(path, "r") as f:
        a = decoded_attrs(f)
        lines = [f"{path}", f"  format:     {a.get(Attr.FORMAT)} v{a.get(Attr.FORMAT_VERSION)}"]
        for k in _SHOWN:
            if k in a:
                lines.append(f"  {k + ':':<11} {a[k]}")
        if Attr.CONFIG in a:
            lines.append(f"  config:     {a[Attr.CONFIG]}")
        if is_virtual(f):
            from visfeat.store.vds import describe_sources

            lines.append(f"  merge:      {describe_sources(f, path)}")
        n = f[IMAGE_ID].shape[0]
        lines.append(f"  images:     {n}")
        for name, ds in f.items():
            if isinstance(ds, h5py.Dataset) and name not in (IMAGE_ID, IMAGE_PATH):
                lines.append(f"  {name:<12} {str(ds.shape):<22} {ds.dtype}")
        if FAILED in f:
            reasons = [r for r in f[FAILED_REASON].asstr()[:]]
            ids = [i for i in f[FAILED_ID].asstr()[:]]
            lines.append(f"  failed:     {len(ids)}")
            kinds = Counter(r.split(":")[0] for r in reasons)
            for kind, c in kinds.most_common():
                lines.append(f"    {c:>6} {kind}")
            for i, r in list(zip(ids, reasons))[:10]:
                lines.append(f"    {i}: {r}")
        if n and "global" in f:
            norms = np.linalg.norm(f["global"][: min(n, 1024)].astype(np.float32), axis=1)
            lines.append(f"  global norm: mean {norms.mean():.3f} min {norms.min():.3f} max {norms.max():.3f}")
        if Attr.FIELDS in a:
            lines.append("  fields:     " + ", ".join(f"{d['name']}{tuple(d['shape'])}" for d in json.loads(a[Attr.FIELDS])))
    return "\n".join(lines)
