"""Box selection strategies, by name. Each takes one image's RoI head outputs and returns which RoIs to keep.

Inputs (input-image pixels): `proposals` (P, 4) RPN boxes; `probs` (P, K) foreground class probabilities
(background column already removed); `class_boxes` (P, K, 4) class-specific regressed boxes, clipped to the
image. Output `Selection`: `keep` indices into the proposals (their features are the region features), the
`boxes` to save, and `obj_id` / `obj_conf`.

Each strategy is registered with the preset options it reads (`Strategy.options`, passed under their own names)
and what it needs of the image (`Strategy.image`: `orig_hw`, `short`/`max_size` of the input size, `scale`).

- `maxnms`: py-bottom-up-attention demo/detectron2_mscoco_proposal_maxnms.py (LXMERT's 36 boxes): per proposal
  its best class and that class's regressed box, class-agnostic NMS whose threshold rises from `nms_start` by
  0.1 until at least `min_boxes` survive, the first `max_boxes` kept. Saved boxes are regressed.
- `perclass`: bottom-up-attention's generate_tsv.py as MILVLG/bottom-up-attention.pytorch keeps it (10-100,
  utils/extract_utils.py save_roi_features): the proposals are scaled to the original image by its `im_scale`
  (one factor, get_image_blob's rule: `preprocess.caffe_scale`), NMS per class with maskrcnn-benchmark's "+1" box areas and `>=`
  suppression gives each proposal the best score with which it survives, `max_conf`; keep
  `max_conf >= conf_thresh`, clamped to [min_boxes, max_boxes] by max_conf. Saved boxes are those scaled
  proposals (no regression, no clipping).
- `nms_filter`: scene_graph_benchmark's NMS_FILTER 1 (VinVL; modeling/roi_heads/box_head/inference.py
  filter_results_peter): per class over all proposals, NMS (torchvision's, plain IoU) at 0.3 on that class's
  box; each proposal keeps the best class it survived for; sorted, keep score >= `conf_thresh` but at least
  `min_boxes` and at most `max_boxes`. Saved boxes: the class's regressed box (or the proposal when the
  regression is ignored), in input pixels.
- `vmb`: MMF tools/scripts/features/extract_features_vmb.py: proposals / `scale` (its one im_scale), per
  class NMS 0.5 with vqa-maskrcnn-benchmark's "+1" kernel, `max_conf` updated where a surviving score beats
  it and `conf_thresh`; the `max_boxes` best by max_conf (stable order), `num_boxes` = how many are nonzero;
  objects = argmax of the foreground probabilities. Saved boxes: those scaled proposals.
- `topk`: the `max_boxes` proposals with the highest foreground score, no threshold, no NMS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torchvision.ops import nms

from .boxes import plus_one as grown_plus_one, suppression_threshold
from .preprocess import caffe_scale


@dataclass
class Selection:
    keep: torch.Tensor  # (k,) int64 indices into the proposals
    boxes: torch.Tensor  # (k, 4) input pixels, or original pixels when `original`
    obj_id: torch.Tensor  # (k,) int64, 0-based foreground class
    obj_conf: torch.Tensor  # (k,)
    original: bool = False  # boxes already in original-image pixels (no detectron2 postprocess)
    num_boxes: int | None = None  # MMF VMB's count of kept boxes with a nonzero score (None: all kept)


@dataclass(frozen=True)
class Strategy:
    fn: Callable[..., Selection]
    options: tuple[str, ...]  # preset options it reads, passed as keywords of the same names
    image: tuple[str, ...] = ()  # per-image inputs: "orig_hw", "short", "max_size", "scale"


STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str, options: tuple[str, ...], image: tuple[str, ...] = ()):
    """Register the decorated function as box selection `name`, reading these options and image inputs."""
    def add(fn: Callable[..., Selection]) -> Callable[..., Selection]:
        STRATEGIES[name] = Strategy(fn, options, image)
        return fn
    return add


@strategy("maxnms", ("min_boxes", "max_boxes", "nms_start"))
def maxnms(proposals, probs, class_boxes, *, min_boxes: int = 36, max_boxes: int = 36,
           nms_start: float = 0.3) -> Selection:
    thresholds = np.arange(float(nms_start), 1.0, 0.1)  # as in the original (0.6000000000000001 etc. included)
    conf, cls = probs.max(1)
    boxes = class_boxes[torch.arange(len(cls), device=cls.device), cls]
    keep = torch.zeros(0, dtype=torch.int64, device=cls.device)
    for t in thresholds:
        keep = nms(boxes, conf, float(t))[:max_boxes]
        if len(keep) >= min_boxes:
            break
    return Selection(keep, boxes[keep], cls[keep], conf[keep])


@strategy("perclass", ("min_boxes", "max_boxes", "conf_thresh", "nms_thresh"), ("orig_hw", "short", "max_size"))
def perclass(proposals, probs, class_boxes, *, orig_hw: tuple[int, int], short: int, max_size: int,
             min_boxes: int = 10, max_boxes: int = 100, conf_thresh: float = 0.2, nms_thresh: float = 0.3
             ) -> Selection:
    dets = proposals.float() / caffe_scale(*orig_hw, short, max_size)  # MILVLG get_image_blob's im_scale
    # What decides the selection: max_conf >= conf_thresh, or the min_boxes best when fewer pass.
    floor = min(conf_thresh, _kth_lower_bound(probs, min_boxes))
    survived = nms_survivors(dets, probs, nms_thresh, floor, plus_one=True, suppress_equal=True)
    max_conf = (probs * survived).amax(1)
    keep = torch.nonzero(max_conf >= conf_thresh).flatten()
    if len(keep) < min_boxes:
        keep = torch.argsort(max_conf, descending=True)[:min_boxes]
    elif len(keep) > max_boxes:
        keep = torch.argsort(max_conf, descending=True)[:max_boxes]
    conf, cls = probs[keep].max(1)
    return Selection(keep, dets[keep], cls, conf, original=True)


@strategy("nms_filter", ("min_boxes", "max_boxes", "conf_thresh", "nms_thresh"))
def nms_filter(proposals, probs, class_boxes, *, min_boxes: int = 10, max_boxes: int = 100,
               conf_thresh: float = 0.2, nms_thresh: float = 0.3) -> Selection:
    # What decides the selection: best >= conf_thresh, or the min_boxes best when fewer pass.
    floor = min(conf_thresh, _kth_lower_bound(probs, min_boxes))
    survived = nms_survivors(class_boxes, probs, nms_thresh, floor)
    best, cls = (probs * survived).max(1)
    cand = torch.nonzero(best).flatten()
    best, cls = best[cand], cls[cand]
    order = torch.argsort(best, descending=True, stable=True)
    n = int((best >= conf_thresh).sum())
    order = order[:min_boxes] if n < min_boxes else order[:min(n, max_boxes)]
    keep = cand[order]
    return Selection(keep, class_boxes[keep, cls[order]], cls[order], best[order])


@strategy("vmb", ("max_boxes", "conf_thresh", "nms_thresh"), ("scale",))
def vmb(proposals, probs, class_boxes, *, scale: float, max_boxes: int = 100, conf_thresh: float = 0.0,
        nms_thresh: float = 0.5) -> Selection:
    dets = proposals.float() / scale
    # What decides the selection: the max_boxes best max_conf (and which of them are nonzero).
    floor = max(conf_thresh, _kth_lower_bound(probs, max_boxes, conf_thresh))
    survived = nms_survivors(dets, probs, nms_thresh, floor, plus_one=True)
    max_conf = (probs * (survived & (probs > conf_thresh))).amax(1)
    order = torch.argsort(max_conf, descending=True, stable=True)[:max_boxes]
    conf, cls = probs[order].max(1)
    return Selection(order, dets[order], cls, conf, original=True, num_boxes=int((max_conf[order] != 0).sum()))


@strategy("topk", ("max_boxes",))
def topk(proposals, probs, class_boxes, *, max_boxes: int = 100) -> Selection:
    conf, cls = probs.max(1)
    keep = torch.argsort(conf, descending=True, stable=True)[:max_boxes]
    return Selection(keep, proposals[keep], cls[keep], conf[keep])


def nms_survivors(boxes: torch.Tensor, probs: torch.Tensor, thresh: float, floor: float = 0.0, *,
                  plus_one: bool = False, suppress_equal: bool = False) -> torch.Tensor:
    """(P, C) bool: which (proposal, class) pairs survive their class's NMS, the originals' loop
    `for c in classes: keep = nms(boxes[:, c], probs[:, c], thresh)`; `boxes` (P, 4) shared or (P, C, 4) per
    class; `plus_one`: maskrcnn-benchmark's "+1" areas, `suppress_equal`: suppress at IoU >= thresh (both as
    `boxes.nms_plus_one`).

    Exact for every pair scoring >= `floor`; pairs below it count as suppressed. Why that is enough, and fast:
    greedy NMS suppresses a box only by higher-scoring ones, so the fate of each pair scoring >= floor is decided
    among such pairs alone (the same IoUs), and each selection here only looks at scores >= its floor. So NMS runs
    on those pairs only, all classes at once (`batched_nms`: no per-class loop, so no wait for the device per
    class)."""
    cand = probs >= floor
    cls_idx, box_idx = torch.nonzero(cand.t(), as_tuple=True)  # grouped by class, proposals ascending
    pair_boxes = (boxes[box_idx] if boxes.dim() == 2 else boxes[box_idx, cls_idx]).float()
    if plus_one:
        pair_boxes = grown_plus_one(pair_boxes)
    kept = batched_nms(pair_boxes, probs[box_idx, cls_idx].float(), cls_idx,
                       suppression_threshold(thresh, suppress_equal))
    survived = torch.zeros_like(cand)
    survived[box_idx[kept], cls_idx[kept]] = True
    return survived


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, thresh: float,
                budget: int = 1 << 21) -> torch.Tensor:
    """(n,) bool: the pairs that torchvision's CPU `nms(boxes[g], scores[g], thresh)` keeps, for every group g
    at once. Exact, which `torchvision.ops.batched_nms` is not: its coordinate offsets (float32) round the boxes
    and so the IoUs. Each group's greedy NMS, in the kernel's order (scores descending, equal scores by
    position: its stable sort) with its float32 IoU arithmetic (`_overlaps`), is the unique fixed point of
    `kept[j] = no kept i before j overlaps j` (suppression only runs forward in that order), reached by
    iterating from all kept in as many steps as the longest suppression chain. Groups run in chunks of
    similar size, padded, `budget` IoUs each: one host synchronisation per iteration and chunk."""
    kept = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    if not len(scores):
        return kept
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]  # by group; in each, the kernel's order
    sizes = torch.unique_consecutive(groups[order], return_counts=True)[1]
    starts = torch.cumsum(sizes, 0) - sizes
    kept[order[starts[sizes == 1]]] = True  # a group of one keeps it
    big = torch.nonzero(sizes > 1).flatten()
    big = big[torch.argsort(sizes[big], descending=True)]
    big_sizes = sizes[big].tolist()  # the one synchronisation for the layout
    at = 0
    while at < len(big):
        n = big_sizes[at]
        g = max(1, budget // (n * n))
        chunk = big[at:at + g]
        at += g
        pos = torch.arange(n, device=scores.device)
        valid = pos < sizes[chunk, None]
        idx = order[torch.where(valid, starts[chunk, None] + pos, 0)]  # (G, n) pairs in the kernel's order
        later = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
        suppresses = (_overlaps(boxes[idx], thresh) & later & valid[:, None, :]).float()  # [i, j]: i hides j
        keep = valid
        while True:
            step = valid & (torch.bmm(keep.float()[:, None, :], suppresses)[:, 0] == 0)
            if torch.equal(step, keep):
                break
            keep = step
        kept[idx[keep]] = True
    return kept


def _overlaps(b: torch.Tensor, thresh: float) -> torch.Tensor:
    """(G, n, 4) -> (G, n, n) IoU > thresh with torchvision's CPU nms kernel arithmetic: float32 areas,
    intersection and ratio, compared in double."""
    x1, y1, x2, y2 = b.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])).clamp(min=0)
    h = (torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])).clamp(min=0)
    inter = w * h
    return (inter / (area[:, :, None] + area[:, None, :] - inter)).double() > thresh


def _kth_lower_bound(probs: torch.Tensor, k: int, above: float = 0.0) -> float:
    """A value the k-th best max_conf (best surviving score above `above`) is sure to reach: each class's
    top-scoring proposal survives its NMS (classes whose top score is shared are left out: which one survives is
    a tie)."""
    if len(probs) < k:
        return 0.0
    top, arg = probs.max(0)
    unique = (probs == top).sum(0) == 1
    top = torch.where(unique & (top > above), top, torch.zeros_like(top))
    bound = torch.zeros(len(probs), dtype=probs.dtype, device=probs.device).scatter_reduce_(0, arg, top, "amax")
    return float(bound.topk(k).values[-1])


def select(name: str, proposals, probs, class_boxes, **kwargs) -> Selection:
    try:
        fn = STRATEGIES[name].fn
    except KeyError:
        raise ValueError(f"unknown box selection {name!r}; known: {', '.join(STRATEGIES)} (or given boxes)") from None
    return fn(proposals, probs, class_boxes, **kwargs)
