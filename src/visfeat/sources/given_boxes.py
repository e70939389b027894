"""Given boxes for forced-boxes extraction: features for boxes you choose (ground truth, another detector's).

Files: `.json` mapping image id -> [[x1, y1, x2, y2], ...] in original image pixels, or a visfeat store
(`.h5`) with a `boxes` field (e.g. another region extractor's output). Every image to extract must have an
entry; an empty list gives no regions for that image.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def read_boxes(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if path.suffix in (".h5", ".hdf5"):
        from visfeat.store.reader import FeatureStore

        store = FeatureStore(path)
        if "boxes" not in {s.name for s in store.specs}:
            raise ValueError(f"{path}: the store has no boxes field")
        return {image_id: np.asarray(store[image_id]["boxes"], np.float32).reshape(-1, 4) for image_id in store}
    if path.suffix != ".json":
        raise ValueError(f"{path}: given boxes come as .json (image id -> [[x1, y1, x2, y2], ...]) or a visfeat .h5")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object image id -> list of [x1, y1, x2, y2]")
    out = {}
    for image_id, boxes in raw.items():
        arr = np.asarray(boxes, np.float32).reshape(-1, 4) if len(boxes) else np.zeros((0, 4), np.float32)
        if not np.isfinite(arr).all() or (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
            raise ValueError(f"{path}: image {image_id!r}: boxes must be finite x1, y1, x2, y2 with x2 >= x1, y2 >= y1")
        out[str(image_id)] = arr
    return out


def check_covered(boxes: dict[str, np.ndarray], image_ids: list[str], source: str) -> None:
    missing = [i for i in image_ids if i not in boxes]
    if missing:
        raise ValueError(f"{source}: no boxes for {len(missing)} of {len(image_ids)} images, e.g. "
                         f"{', '.join(missing[:5])}")


def digest(boxes: dict[str, np.ndarray]) -> str:
    """Identifies the boxes in the extraction's resume signature and the store's config."""
    h = hashlib.sha256()
    for k in sorted(boxes):
        h.update(k.encode() + b"\0" + np.ascontiguousarray(boxes[k], np.float32).tobytes())
    return h.hexdigest()
