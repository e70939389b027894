"""Text embeddings of captions by any preset with a text tower (`Preset.text`: the CLIP presets, `openclip`),
in a store of their own beside the image store. Each extractor's `encode_text` tokenizes as its model does.

Layout: `caption_id` (N,) utf-8 unique, `image_id` (N,), `caption` (N,), `text` (N, D) float32 (unnormalised,
like the image store's `global`); attributes as the image store (format `visfeat-text`).
Inputs: Karpathy's dataset_{coco,flickr30k}.json (caption id = sentid, image id = cocoid or the file stem), a
text file of `image_id<TAB>caption` lines (caption id = `{image_id}#{k}`), or a dataset's manifest.parquet whose
`txt` column holds each sample's caption (webdataset and urls sources, as img2dataset writes them; caption id =
`{image_id}#0`; samples without a caption are left out).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from visfeat.version import __version__


def read_captions(path: str) -> list[tuple[str, str, str]]:
    """[(caption_id, image_id, caption)]"""
    p = Path(path)
    if p.suffix == ".parquet":
        import pandas as pd

        df = pd.read_parquet(p)
        if "image_id" not in df.columns and "tar" in df.columns:  # a manifest of tars: their txt members
            from visfeat.sources.tars import scan_manifest_tars

            df = scan_manifest_tars(p)
        if "txt" not in df.columns:
            raise ValueError(f"{path}: this manifest has no `txt` captions (only webdataset and urls sources carry them)")
        return [(f"{i}#0", str(i), str(c)) for i, c in zip(df["image_id"], df["txt"].fillna("")) if str(c).strip()]
    if p.suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        out = []
        for img in data["images"]:
            image_id = str(img["cocoid"]) if "cocoid" in img else os.path.splitext(img["filename"])[0]
            for s in img["sentences"]:
                out.append((str(s["sentid"]), image_id, s["raw"]))
        return out
    out, counts = [], {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ValueError(f"{path}:{n}: expected image_id<TAB>caption")
        image_id, cap = line.split("\t", 1)
        k = counts[image_id] = counts.get(image_id, -1) + 1
        out.append((f"{image_id}#{k}", image_id, cap))
    return out


def embed_captions(preset: str, captions: str, out: str, weights: str | None = None, device: str | None = None,
                   amp: bool = False, batch_size: int = 256, options: dict | None = None) -> int:
    """Embed every caption of `captions` with the preset's text tower (`options`: the preset's options, e.g.
    an `openclip` extractor's model and tag) into the store `out`; returns the number of captions."""
    from visfeat.extractors.registry import get_preset, load_extractor, presets

    if not get_preset(preset).text:
        with_text = ", ".join(p for p in presets() if get_preset(p).text)
        raise ValueError(f"text embeddings need a preset with a text tower ({with_text}), not {preset!r}")
    ex = load_extractor(preset, weights=weights, device=device, amp=amp, **(options or {}))
    rows = read_captions(captions)
    embs = [ex.encode_text([c for _, _, c in rows[a:a + batch_size]]) for a in range(0, len(rows), batch_size)]
    emb = np.concatenate(embs) if embs else ex.encode_text([""])[:0]  # (0, D): D as the tower makes it
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(f".{Path(out).name}.tmp")
    with h5py.File(tmp, "w") as f:
        s = h5py.string_dtype("utf-8")
        f.create_dataset("caption_id", data=np.asarray([r[0] for r in rows], dtype=object), dtype=s, track_times=False)
        f.create_dataset("image_id", data=np.asarray([r[1] for r in rows], dtype=object), dtype=s, track_times=False)
        f.create_dataset("caption", data=np.asarray([r[2] for r in rows], dtype=object), dtype=s, track_times=False)
        f.create_dataset("text", data=emb.astype(np.float32), track_times=False)
        f.attrs.update({"format": "visfeat-text", "format_version": 1, "preset": preset,
                        "config": json.dumps(ex.config, sort_keys=True), "weights_sha256": ex.weights_sha256,
                        "visfeat_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    os.replace(tmp, out)
    return len(rows)
