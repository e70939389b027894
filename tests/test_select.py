"""The pruned per-class selections equal the originals' loops over every class.

`perclass`, `nms_filter` and `vmb` run NMS only where a score can still change the result
(`select.nms_survivors`); the oracles below are the originals' loops as written (MILVLG extract_utils.py,
scene_graph_benchmark filter_results_peter, MMF extract_features_vmb.py), one NMS per class over all proposals.
"""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import nms

from visfeat.detection import select
from visfeat.detection.boxes import nms_plus_one


def loop_perclass(dets, probs, *, min_boxes, max_boxes, conf_thresh, nms_thresh):
    max_conf = torch.zeros(len(dets))
    for c in range(probs.shape[1]):
        kept = nms_plus_one(dets, probs[:, c], nms_thresh, suppress_equal=True)
        max_conf[kept] = torch.where(probs[kept, c] > max_conf[kept], probs[kept, c], max_conf[kept])
    keep = torch.nonzero(max_conf >= conf_thresh).flatten()
    if len(keep) < min_boxes:
        keep = torch.argsort(max_conf, descending=True)[:min_boxes]
    elif len(keep) > max_boxes:
        keep = torch.argsort(max_conf, descending=True)[:max_boxes]
    return keep, max_conf


def loop_nms_filter(class_boxes, probs, *, min_boxes, max_boxes, conf_thresh, nms_thresh):
    mask = torch.zeros_like(probs)
    for c in range(probs.shape[1]):
        mask[nms(class_boxes[:, c], probs[:, c], nms_thresh), c] = 1
    best, cls = (mask * probs).max(1)
    cand = torch.nonzero(best).flatten()
    best, cls = best[cand], cls[cand]
    order = torch.argsort(best, descending=True, stable=True)
    n = int((best >= conf_thresh).sum())
    order = order[:min_boxes] if n < min_boxes else order[:min(n, max_boxes)]
    return cand[order], cls[order], best[order]


def loop_vmb(dets, probs, *, max_boxes, conf_thresh, nms_thresh):
    max_conf = torch.zeros(len(dets))
    for c in range(probs.shape[1]):
        kept = nms_plus_one(dets, probs[:, c], nms_thresh)
        s = probs[kept, c]
        max_conf[kept] = torch.where((s > max_conf[kept]) & (s > conf_thresh), s, max_conf[kept])
    order = torch.argsort(max_conf, descending=True, stable=True)[:max_boxes]
    return order, int((max_conf[order] != 0).sum())


def detections(seed: int, proposals: int, classes: int, peak: float):
    """Proposals clustered around a few objects (so NMS has work to do) and softmax class scores whose
    sharpness `peak` runs from near uniform (random-init models) to confident (trained ones)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(8, 2, generator=g) * 500
    which = torch.randint(0, 8, (proposals,), generator=g)
    xy = centres[which] + torch.randn(proposals, 2, generator=g) * 20
    wh = 30 + torch.rand(proposals, 2, generator=g) * 120
    boxes = torch.cat([xy, xy + wh], 1)
    logits = torch.randn(proposals, classes + 1, generator=g) * peak
    logits[torch.arange(proposals), torch.randint(0, classes + 1, (proposals,), generator=g)] += peak * 2
    probs = logits.softmax(1)[:, 1:]  # background dropped, as the extractors pass them
    class_boxes = boxes[:, None, :] + torch.randn(proposals, classes, 4, generator=g) * 5
    return boxes, probs, class_boxes


CASES = {
    "trained-like": dict(seed=0, proposals=600, classes=400, peak=3.0),
    "near-uniform": dict(seed=1, proposals=600, classes=400, peak=0.1),
    "few-proposals": dict(seed=2, proposals=40, classes=50, peak=1.0),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    return detections(**CASES[request.param])


def with_ties(boxes, probs, class_boxes):
    """Exact duplicates (a proposal repeated, so every class score ties) as RPNs over FPN levels can give."""
    idx = torch.cat([torch.arange(len(boxes)), torch.arange(0, len(boxes), 7)])
    return boxes[idx], probs[idx], class_boxes[idx]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("conf_thresh", [0.2, 0.02])
def test_perclass_equals_loop(case, ties, conf_thresh):
    boxes, probs, class_boxes = with_ties(*case) if ties else case
    opts = dict(min_boxes=10, max_boxes=100, conf_thresh=conf_thresh, nms_thresh=0.3)
    got = select.perclass(boxes, probs, class_boxes, orig_hw=(600, 600), short=600, max_size=1000, **opts)
    keep, max_conf = loop_perclass(boxes, probs, **opts)
    # both order by a non-stable argsort (the original's): compare the kept sets and their max_conf
    assert sorted(got.keep.tolist()) == sorted(keep.tolist())
    assert torch.equal(max_conf[got.keep].sort().values, max_conf[keep].sort().values)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("conf_thresh", [0.2, 0.02])
def test_nms_filter_equals_loop(case, ties, conf_thresh):
    boxes, probs, class_boxes = with_ties(*case) if ties else case
    opts = dict(min_boxes=10, max_boxes=100, conf_thresh=conf_thresh, nms_thresh=0.3)
    got = select.nms_filter(boxes, probs, class_boxes, **opts)
    keep, cls, best = loop_nms_filter(class_boxes, probs, **opts)
    assert torch.equal(got.keep, keep) and torch.equal(got.obj_id, cls) and torch.equal(got.obj_conf, best)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("conf_thresh", [0.0, 0.05])
def test_vmb_equals_loop(case, ties, conf_thresh):
    boxes, probs, class_boxes = with_ties(*case) if ties else case
    got = select.vmb(boxes, probs, class_boxes, scale=1.0, max_boxes=100, conf_thresh=conf_thresh, nms_thresh=0.5)
    order, num_boxes = loop_vmb(boxes, probs, max_boxes=100, conf_thresh=conf_thresh, nms_thresh=0.5)
    assert torch.equal(got.keep, order) and got.num_boxes == num_boxes


def test_survivors_prune_most_classes():
    """The point of the pruning: on trained-like scores with VG's 1600 classes few classes need an NMS."""
    boxes, probs, _ = detections(seed=3, proposals=1000, classes=1600, peak=3.0)
    floor = select._kth_lower_bound(probs, 100)
    need = int(((probs >= floor).sum(0) > 1).sum())
    assert floor > 0 and need < 160, (floor, need)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("opts", [{}, {"plus_one": True, "suppress_equal": True},
                                  {"plus_one": True, "suppress_equal": True, "kernel_order": True}])
def test_loop_survivors_equal_unpruned_survivors(shared, opts):
    """The exact passes of the tie rules (one nms per class) decide every pair as nms_survivors with no floor."""
    boxes, probs, class_boxes = with_ties(*detections(seed=4, proposals=60, classes=30, peak=1.0))
    probs = torch.where(probs > 0.05, torch.ones_like(probs), probs)  # saturated: many exact ties
    b = boxes if shared else class_boxes
    assert torch.equal(select.loop_survivors(b, probs, 0.3, **opts), select.nms_survivors(b, probs, 0.3, 0.0, **opts))
