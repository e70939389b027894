"""The tests' region comparison (helpers.photos.assert_same_regions): row order is free, every field still counts."""
from __future__ import annotations

import numpy as np
import pytest
from helpers.photos import assert_same_regions


def regions(n: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, (n, 2)).astype(np.float32)
    return {"boxes": np.concatenate([xy, xy + rng.uniform(20, 100, (n, 2)).astype(np.float32)], 1),
            "obj_id": rng.integers(0, 1600, n), "obj_conf": rng.uniform(0, 1, n).astype(np.float32),
            "attr_ids": rng.integers(-1, 400, (n, 16)), "features": rng.normal(size=(n, 32)).astype(np.float32),
            "num_boxes": np.int64(n), "image_hw": np.array([480, 640])}


def test_rows_in_another_order_match_through_the_matching():
    a = regions()
    perm = np.array([1, 0, 2, 3, 5, 4])  # e.g. two ties swapped twice
    b = {k: (v[perm] if np.ndim(v) and len(v) == 6 and k != "image_hw" else v) for k, v in a.items()}
    assert (assert_same_regions(b, a, "permuted") == np.argsort(perm)).all()


@pytest.mark.parametrize("change,message", [
    ("attr", "attr_ids differ"), ("box", "has no match"), ("label", "has no match"),
    ("score", "obj_conf"), ("feature", "feature cosine"), ("count", "boxes, reference"),
    ("unknown", "no comparison rule"),
])
def test_each_changed_field_fails(change, message):
    a, b = regions(), regions()
    if change == "attr":
        b["attr_ids"][2, 0] += 1
    elif change == "box":
        b["boxes"][3] += 40
    elif change == "label":
        b["obj_id"][1] += 1
    elif change == "score":
        b["obj_conf"][4] += 0.01
    elif change == "feature":
        b["features"][0] = -b["features"][0]
    elif change == "count":
        b = {k: (v[:5] if np.ndim(v) and k != "image_hw" else v) for k, v in b.items()}
    elif change == "unknown":
        a["mystery"] = b["mystery"] = np.zeros(6)
    with pytest.raises(AssertionError, match=message):
        assert_same_regions(b, a, "mutated")
