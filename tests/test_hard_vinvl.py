"""VinVL where detectors are fragile: saturated class scores (many exactly 1.0), inverted and flat boxes.

Fixture tests/fixtures/vinvl_hard/ (see its NOTE.md): scene_graph_benchmark's AttrRCNN run through MMF's
extract_features_vinvl.py on the tiny VinVL weights with the box predictor scaled (class logits x60, box deltas
x20). On every photo with regression the top-100 cut falls inside a group of equal scores, so the kept boxes are
decided by the original's tie order (its RPN topk, the stable sort of torchvision's NMS, filter_results_peter's
unstable torch.sort); and regressed boxes come out with y2 < y1 or x2 < x1, where an IoU means nothing. Boxes are
matched here by coordinates (within the original's own 1-vs-2-thread noise), not by IoU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.photos import cosine, photo

import visfeat

FIX = Path(__file__).parent / "fixtures"
HARD = FIX / "vinvl_hard"
BASE_WEIGHTS = FIX / "vinvl" / "tiny_vinvl.pth"
PHOTOS = ("astronaut.png", "chelsea.png", "hubble_deep_field.jpg", "coffee.png", "horse.png")
VARIANTS = ("regress", "noregress")


def load(name: str) -> dict:
    with np.load(HARD / name) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ref() -> dict:
    return load("reference.npz")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """tiny_vinvl.pth with the fixture's four scaled box-predictor tensors, in the original checkpoint layout."""
    ck = torch.load(BASE_WEIGHTS, map_location="cpu", weights_only=False)
    ck["model"].update(torch.load(HARD / "hard_predictor.pth", map_location="cpu"))
    path = tmp_path_factory.mktemp("vinvl_hard") / "tiny_vinvl_hard.pth"
    torch.save(ck, path)
    return path


@pytest.fixture(scope="module")
def ours(weights) -> dict:
    out = {}
    for variant in VARIANTS:
        ex = visfeat.load_extractor("vinvl-x152c4", weights=str(weights), device="cpu",
                                    ignore_box_regression=variant == "noregress")
        for n in PHOTOS:
            batch = ex.collate([ex.preprocess(photo(n))])
            batch["image_id"] = [Path(n).stem]
            (out[Path(n).stem, variant],) = ex.forward(batch)
    return out


def part(d: dict, stem: str, variant: str) -> dict:
    p = f"{stem}/{variant}/"
    return {k[len(p):]: v for k, v in d.items() if k.startswith(p)}


def match_by_coordinates(boxes: np.ndarray, labels: np.ndarray, ref_boxes: np.ndarray, ref_labels: np.ndarray,
                         tol: float) -> tuple[np.ndarray, int]:
    """Greedy one-to-one matching, each reference row in order taking the closest unused row (max coordinate
    difference <= tol) with the same label. Returns (match, number of reference rows left unmatched; -1 in
    match). IoU is useless here: a box with y2 < y1 has a negative area and no overlap with anything."""
    d = np.abs(ref_boxes[:, None, :] - boxes[None, :, :]).max(-1) if len(boxes) else np.zeros((len(ref_boxes), 0))
    match = np.full(len(ref_boxes), -1)
    used: set[int] = set()
    for i in range(len(ref_boxes)):
        for j in np.argsort(d[i], kind="stable"):
            if d[i, j] > tol:
                break
            if j not in used and labels[j] == ref_labels[i]:
                match[i] = j
                used.add(int(j))
                break
    return match, int((match < 0).sum())


def assert_same_attributes(ids, confs, ref_ids, ref_confs, what: str, atol: float = 1e-3) -> None:
    """Per box the same attribute -> confidence map (ids where the confidence is > 0), confidences within atol;
    an id may be missing on one side only when its confidence is within atol of the row's last kept one or of
    0. The order follows from the confidences: two within noise of each other may swap (here two attributes
    0.0527766 / 0.0527769 of one box, from box coordinates 0.01 px apart)."""
    for i in range(len(ref_ids)):
        ours = {int(a): float(c) for a, c in zip(ids[i], confs[i]) if c > 0}
        want = {int(a): float(c) for a, c in zip(ref_ids[i], ref_confs[i]) if c > 0}
        for a in ours.keys() & want.keys():
            assert abs(ours[a] - want[a]) <= atol, f"{what}: box {i} attribute {a} {ours[a]} vs {want[a]}"
        for side, other in ((ours, want), (want, ours)):
            edge = min(other.values(), default=0.0)
            for a in side.keys() - other.keys():
                assert side[a] <= edge + atol, f"{what}: box {i} attribute {a} ({side[a]}) on one side only"


def thread_noise(ref: dict, stem: str, variant: str) -> float:
    """The original's own box difference between 1 and 2 torch threads (same selection, same rows)."""
    a, b = part(ref, stem, variant), part(load("threads2.npz"), stem, variant)
    assert np.array_equal(a["labels"], b["labels"]), "the 2-thread reference changed its selection"
    return float(np.abs(a["boxes"] - b["boxes"]).max())


def box_tol(ref: dict, stem: str, variant: str) -> float:
    return max(1e-3, 4 * thread_noise(ref, stem, variant))


def test_the_fixture_is_in_the_hard_regime(ref):
    """What the fixture claims, read from the original's outputs: saturated scores, a top-100 cut inside a group
    of equal scores, inverted and flat regressed boxes."""
    for n in PHOTOS:
        stem = Path(n).stem
        for variant in VARIANTS:
            r = part(ref, stem, variant)
            scores, cand = r["scores"], np.sort(r["candidates"])[::-1]
            assert len(scores) == 100 and (scores == 1.0).sum() >= 60, (stem, variant)
            if variant == "regress":  # the cut at 100 splits equal scores: the tie order decides the kept set
                assert cand[99] == cand[100], stem
        b = part(ref, stem, "regress")["boxes_resized"]
        assert ((b[:, 3] < b[:, 1]) | (b[:, 2] < b[:, 0])).sum() >= 1, f"{stem}: no inverted kept box"
        assert ((b[:, 3] == b[:, 1]) | (b[:, 2] == b[:, 0])).sum() >= 1, f"{stem}: no flat kept box"
    horse = ref["horse/debug/objectness"]
    assert (horse == 1.0).sum() > 50, "horse: RPN objectness saturates (topk order of equal sigmoids)"


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_regions_as_scene_graph_benchmark(ref, ours, variant):
    """Same boxes one to one (within 4x the original's thread noise), same labels, in the original's row order
    (ties included), features cosine >= 0.999, scores and attributes as the original."""
    for n in PHOTOS:
        stem = Path(n).stem
        r, o = part(ref, stem, variant), ours[stem, variant]
        what = f"{variant} {stem}"
        match, missing = match_by_coordinates(o["boxes"], o["obj_id"], r["boxes"], r["labels"] - 1,
                                              box_tol(ref, stem, variant))
        assert missing == 0, f"{what}: {missing} of {len(r['boxes'])} reference boxes unmatched"
        assert len(o["boxes"]) == len(r["boxes"]), what
        assert np.array_equal(match, np.arange(len(match))), f"{what}: rows not in the original's order"
        assert cosine(o["features"], r["box_features"]).min() >= 0.999, what
        np.testing.assert_allclose(o["obj_conf"], r["scores"], atol=1e-3, err_msg=what)  # as assert_same_regions
        ref_ids = np.where(r["attr_scores"] > 0, r["attr_labels"] - 1, -1)
        assert_same_attributes(o["attr_ids"], o["attr_confs"], ref_ids, r["attr_scores"], what)


def test_within_the_originals_own_disagreement_under_one_ulp(ref, ours):
    """The original disagrees with itself when its input moves by one float32 ulp: near-equal RPN scores swap,
    the candidates reach filter_results_peter's unstable sort in another order and other boxes of score 1.0 make
    the top-100 cut. Counted as reference boxes with no same-label box within 1 px (box noise under the ulp
    change reaches 0.05 px on the proposals, more after the x20 deltas: not counted). visfeat's disagreement,
    at the tight tolerance of the parity test, is bounded by that photo by photo (and is 0 here)."""
    ulp = load("ulp.npz")
    own_total = ours_total = 0
    for n in PHOTOS:
        stem = Path(n).stem
        for variant in VARIANTS:
            r, u, o = part(ref, stem, variant), part(ulp, stem, variant), ours[stem, variant]
            _, own = match_by_coordinates(u["boxes"], u["labels"], r["boxes"], r["labels"], 1.0)
            _, mine = match_by_coordinates(o["boxes"], o["obj_id"] + 1, r["boxes"], r["labels"],
                                           box_tol(ref, stem, variant))
            assert mine <= own, f"{variant} {stem}: {mine} boxes differ, the original's own {own}"
            own_total += own
            ours_total += mine
    assert own_total > 0 and ours_total == 0, (own_total, ours_total)
