"""Real photos (scikit-image's data) and box geometry shared by the detector tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photo(name: str) -> Image.Image:
    import skimage

    return Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU matrix, x2 - x1 widths; a degenerate pair that coincides counts as 1."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    same = np.all(np.abs(a[:, None, :] - b[None, :, :]) < 1e-3, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(same, 1.0, inter / union)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
