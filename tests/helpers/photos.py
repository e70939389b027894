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


# Fields of a region output that hold one row per box; `assert_same_regions` compares each of them through the
# box matching, never row by row: two boxes with (almost) equal scores may come out in either order.
BOX_INTS = ("obj_id", "attr_id", "attr_ids")
BOX_FLOATS = ("obj_conf", "attr_conf", "attr_confs", "cls_prob")
PER_IMAGE = ("num_boxes", "image_hw")


def top_boxes(out: dict, k: int) -> dict:
    """The first k boxes of a fixed-size output (VMB's 100 rows hold num_boxes real ones): per-box fields cut to
    k, per-image fields kept, num_boxes dropped (the caller compares it)."""
    return {f: (v if f in PER_IMAGE else v[:k]) for f, v in out.items() if f != "num_boxes"}


def match_boxes(ours: dict, ref: dict, what: str, min_iou: float = 0.99) -> np.ndarray:
    """Greedy one-to-one matching: each reference box, in the reference's order, takes the unused box of ours
    with the highest IoU (>= min_iou) and the same label. Returns `match`: ref row i is ours row match[i]."""
    boxes, labels = ref["boxes"], ref["obj_id"]
    assert len(ours["boxes"]) == len(boxes), f"{what}: {len(ours['boxes'])} boxes, reference {len(boxes)}"
    m = iou(boxes, ours["boxes"])
    match: list[int] = []
    used: set[int] = set()
    for i in range(len(boxes)):
        cand = [j for j in np.argsort(-m[i], kind="stable")
                if j not in used and m[i, j] >= min_iou and ours["obj_id"][j] == labels[i]]
        assert cand, f"{what}: reference box {i} {boxes[i]} (label {labels[i]}) has no match " \
                     f"(best IoU {m[i].max() if m.size else 0:.4f})"
        match.append(cand[0])
        used.add(cand[0])
    return np.asarray(match, dtype=np.int64)


def assert_same_regions(ours: dict, ref: dict, what: str, atol: float = 1e-3, min_cos: float = 0.999) -> np.ndarray:
    """Same regions up to row order: boxes matched one to one (`match_boxes`), then every field the reference
    has compared through that matching: integer ids exactly, scores within atol, features by cosine >= min_cos.
    A reference field this helper does not know is an error, so no field goes unchecked. Returns the matching."""
    match = match_boxes(ours, ref, what)
    for k, want in ref.items():
        if k in ("boxes", "image_id"):
            continue
        assert k in ours, f"{what}: no field {k!r}"
        if k == "features":
            cos = cosine(ours[k][match], want) if len(match) else np.ones(1)
            assert cos.min() >= min_cos, f"{what}: feature cosine {cos.min():.5f}"
        elif k in BOX_INTS:
            assert np.array_equal(ours[k][match], want), f"{what}: {k} differ"
        elif k in BOX_FLOATS:
            np.testing.assert_allclose(ours[k][match], want, atol=atol, err_msg=f"{what}: {k}")
        elif k in PER_IMAGE:
            assert np.array_equal(ours[k], want), f"{what}: {k} {ours[k]} vs {want}"
        else:
            raise AssertionError(f"{what}: reference field {k!r} has no comparison rule")
    return match
