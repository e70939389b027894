"""`visfeat inspect`: a human summary of a feature or text store."""
from __future__ import annotations

import json
from collections import Counter

import h5py
import numpy as np


def describe(path: str) -> str:
    with h5py.File(path, "r") as f:
        a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        lines = [f"{path}", f"  format:     {a.get('format')} v{a.get('format_version')}"]
        for k in ("preset", "extractor", "weights_sha256", "visfeat_version", "created", "storage_dtype", "compression"):
            if k in a:
                lines.append(f"  {k + ':':<11} {a[k]}")
        if "config" in a:
            lines.append(f"  config:     {a['config']}")
        if a.get("merge") == "virtual":
            from visfeat.store.vds import describe_sources

            lines.append(f"  merge:      {describe_sources(f, path)}")
        n = f["image_id"].shape[0]
        lines.append(f"  images:     {n}")
        for name, ds in f.items():
            if isinstance(ds, h5py.Dataset) and name not in ("image_id", "image_path"):
                lines.append(f"  {name:<12} {str(ds.shape):<22} {ds.dtype}")
        if "failed" in f:
            reasons = [r for r in f["failed/reason"].asstr()[:]]
            ids = [i for i in f["failed/image_id"].asstr()[:]]
            lines.append(f"  failed:     {len(ids)}")
            kinds = Counter(r.split(":")[0] for r in reasons)
            for kind, c in kinds.most_common():
                lines.append(f"    {c:>6} {kind}")
            for i, r in list(zip(ids, reasons))[:10]:
                lines.append(f"    {i}: {r}")
        if n and "global" in f:
            norms = np.linalg.norm(f["global"][: min(n, 1024)].astype(np.float32), axis=1)
            lines.append(f"  global norm: mean {norms.mean():.3f} min {norms.min():.3f} max {norms.max():.3f}")
        if "fields" in a:
            lines.append("  fields:     " + ", ".join(f"{d['name']}{tuple(d['shape'])}" for d in json.loads(a["fields"])))
    return "\n".join(lines)
