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
  `max_conf >= conf_thresh`, clamped to [min_boxes, max_boxes] by max_conf (equal scores in both the NMS and
  the clamp ordered by `nms_order`). Saved boxes are those scaled proposals (no regression, no clipping).
- `nms_filter`: scene_graph_benchmark's NMS_FILTER 1 (VinVL; modeling/roi_heads/box_head/inference.py
  filter_results_peter): per class over all proposals, NMS (torchvision's, plain IoU) at 0.3 on that class's
  box; each proposal keeps the best class it survived for; sorted (its unstable torch.sort: equal scores in
  that sort's order over all candidates), keep score >= `conf_thresh` but at least
  `min_boxes` and at most `max_boxes`. Saved boxes: the class's regressed box (or the proposal when the
  regression is ignored), in input pixels.
- `vmb`: MMF tools/scripts/features/extract_features_vmb.py: proposals / `scale` (its one im_scale), per
  class NMS 0.5 with vqa-maskrcnn-benchmark's "+1" kernel, `max_conf` updated where a surviving score beats
  it and `conf_thresh`; the `max_boxes` best by max_conf (equal ones by `nms_order`), `num_boxes` = how many are nonzero;
  objects = argmax of the foreground probabilities. Saved boxes: those scaled proposals.
- `topk`: the `max_boxes` proposals with the highest foreground score, no threshold, no NMS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torchvision.ops import nms

from visfeat.detection.boxes import plus_one as grown_plus_one, suppression_threshold
from visfeat.detection.preprocess import caffe_scale


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


@strategy("perclass", ("min_boxes", "max_boxes", "conf_thresh", "nms_thresh", "nms_order"),
          ("orig_hw", "short", "max_size"))
def perclass(proposals, probs, class_boxes, *, orig_hw: tuple[int, int], short: int, max_size: int,
             min_boxes: int = 10, max_boxes: int = 100, conf_thresh: float = 0.2, nms_thresh: float = 0.3,
             nms_order: str = "stable") -> Selection:
    """`nms_order`: how each class's NMS orders equal scores: "stable" (by position, torchvision's kernels) or
    "aten" (as MILVLG's compiled CPU kernel does: `kernel_rank`)."""
    if nms_order not in ("stable", "aten"):
        raise ValueError(f"perclass: nms_order {nms_order!r}: 'stable' or 'aten'")
    dets = proposals.float() / caffe_scale(*orig_hw, short, max_size)  # MILVLG get_image_blob's im_scale
    # What decides the selection: max_conf >= conf_thresh, or the min_boxes best when fewer pass.
    floor = min(conf_thresh, _kth_lower_bound(probs, min_boxes))
    aten = nms_order == "aten"
    max_conf = _perclass_max_conf(dets, probs, nms_thresh, floor, aten)
    keep = torch.nonzero(max_conf >= conf_thresh).flatten()
    if len(keep) < min_boxes or len(keep) > max_boxes:
        k = min_boxes if len(keep) < min_boxes else max_boxes
        # extract_utils.py: torch.argsort(max_conf, descending=True), NOT stable, on the CPU (its tensors are .cpu()):
        # equal max_conf (saturated 1.0s) come out in the sort's order, which depends on every value of max_conf
        order = torch.argsort(max_conf.cpu(), descending=True)
        if floor > 0 and _ties(max_conf.cpu()[order[:k + 1]]):  # then the exact max_conf of every proposal
            max_conf = _perclass_max_conf(dets, probs, nms_thresh, None, aten)
            order = torch.argsort(max_conf.cpu(), descending=True)
        keep = order[:k].to(probs.device)
    conf, cls = probs[keep].max(1)
    return Selection(keep, dets[keep], cls, conf, original=True)


def _perclass_max_conf(dets, probs, nms_thresh: float, floor: float | None, aten: bool) -> torch.Tensor:
    """MILVLG's max_conf (exact where >= floor; floor None: everywhere): per class, its compiled CPU nms
    (nms_cpu.cpp: "+1" areas, IoU >= thresh suppresses; `aten`: boxes visited in its `scores.sort(0,
    descending=True)` order)."""
    kw = dict(plus_one=True, suppress_equal=True, kernel_order=aten)
    survived = (loop_survivors(dets, probs, nms_thresh, **kw) if floor is None
                else nms_survivors(dets, probs, nms_thresh, floor, **kw))
    return (probs * survived).amax(1)


@strategy("nms_filter", ("min_boxes", "max_boxes", "conf_thresh", "nms_thresh"))
def nms_filter(proposals, probs, class_boxes, *, min_boxes: int = 10, max_boxes: int = 100,
               conf_thresh: float = 0.2, nms_thresh: float = 0.3) -> Selection:
    # What decides the selection: best >= conf_thresh, or the min_boxes best when fewer pass.
    floor = min(conf_thresh, _kth_lower_bound(probs, min_boxes))
    cand, best, cls = _best_survived(class_boxes, probs, nms_thresh, floor)
    # filter_results_peter: torch.sort(scores_pre, descending=True), NOT stable: equal scores (saturated 1.0s)
    # come out in the sort's order, which depends on every candidate (its introsort on the CPU)
    order = torch.sort(best, descending=True)[1]
    n = int((best >= conf_thresh).sum())
    k = min_boxes if n < min_boxes else min(n, max_boxes)
    if floor > 0 and _ties(best[order[:k + 1]]):  # then sort exactly the original's candidates: all of them
        cand, best, cls = _best_survived(class_boxes, probs, nms_thresh, None)
        order = torch.sort(best, descending=True)[1]
    order = order[:k]
    keep = cand[order]
    return Selection(keep, class_boxes[keep, cls[order]], cls[order], best[order])


def _best_survived(class_boxes, probs, nms_thresh: float, floor: float | None):
    """filter_results_peter's candidates: proposals with a class they survive for (exact for scores >= floor;
    floor None: for all, by the original's own loop of one torchvision nms per class, which on the CPU is much
    faster than `nms_survivors` over every pair), their best such score and class, in proposal order."""
    survived = (loop_survivors(class_boxes, probs, nms_thresh) if floor is None
                else nms_survivors(class_boxes, probs, nms_thresh, floor))
    best, cls = (probs * survived).max(1)
    cand = torch.nonzero(best).flatten()
    return cand, best[cand], cls[cand]


def _ties(values: torch.Tensor) -> bool:
    """Whether sorted `values` hold an equal pair (then their order is the sort algorithm's)."""
    return bool((values[1:] == values[:-1]).any())


@strategy("vmb", ("max_boxes", "conf_thresh", "nms_thresh", "nms_order"), ("scale",))
def vmb(proposals, probs, class_boxes, *, scale: float, max_boxes: int = 100, conf_thresh: float = 0.0,
        nms_thresh: float = 0.5, nms_order: str = "stable") -> Selection:
    """`nms_order`: how equal scores are ordered: "stable" (by position) or "aten" (as MMF on the CPU: the fork's
    nms_cpu.cpp visits each class in `scores.sort(0, descending=True)` order and suppresses at IoU >= thresh, and
    MMF ranks with `torch.sort(max_conf, descending=True)`, neither stable: equal (saturated) scores in ATen's
    order, which depends on every value, so it then ranks the exact max_conf of every proposal)."""
    if nms_order not in ("stable", "aten"):
        raise ValueError(f"vmb: nms_order {nms_order!r}: 'stable' or 'aten'")
    aten = nms_order == "aten"
    dets = proposals.float() / scale
    # What decides the selection: the max_boxes best max_conf (and which of them are nonzero).
    floor = max(conf_thresh, _kth_lower_bound(probs, max_boxes, conf_thresh))
    max_conf = _vmb_max_conf(dets, probs, nms_thresh, floor, conf_thresh, aten)
    if aten:
        ranked, order = torch.sort(max_conf.cpu(), descending=True)
        if floor > conf_thresh and _ties(ranked[:max_boxes + 1]):  # then the exact max_conf of every proposal
            max_conf = _vmb_max_conf(dets, probs, nms_thresh, None, conf_thresh, aten)
            order = torch.sort(max_conf.cpu(), descending=True)[1]
        order = order[:max_boxes].to(probs.device)
    else:
        order = torch.argsort(max_conf, descending=True, stable=True)[:max_boxes]
    conf, cls = probs[order].max(1)
    return Selection(order, dets[order], cls, conf, original=True, num_boxes=int((max_conf[order] != 0).sum()))


def _vmb_max_conf(dets, probs, nms_thresh: float, floor: float | None, conf_thresh: float, aten: bool
                  ) -> torch.Tensor:
    """MMF's max_conf: the best score > conf_thresh each proposal survives its class's NMS with ("+1" IoU; `aten`:
    the fork's CPU kernel order and >= rule). Exact for scores >= floor; floor None (`aten` only): for all, by
    MMF's own loop of one NMS per class (torchvision's on boxes grown by 1, fed the kernel's visiting order), on
    the CPU much faster than `nms_survivors` over every pair."""
    kw = dict(plus_one=True, suppress_equal=aten, kernel_order=aten)
    survived = (loop_survivors(dets, probs, nms_thresh, **kw) if floor is None
                else nms_survivors(dets, probs, nms_thresh, floor, **kw))
    return (probs * (survived & (probs > conf_thresh))).amax(1)


@strategy("topk", ("max_boxes",))
def topk(proposals, probs, class_boxes, *, max_boxes: int = 100) -> Selection:
    conf, cls = probs.max(1)
    keep = torch.argsort(conf, descending=True, stable=True)[:max_boxes]
    return Selection(keep, proposals[keep], cls[keep], conf[keep])


def nms_survivors(boxes: torch.Tensor, probs: torch.Tensor, thresh: float, floor: float = 0.0, *,
                  plus_one: bool = False, suppress_equal: bool = False, kernel_order: bool = False) -> torch.Tensor:
    """(P, C) bool: which (proposal, class) pairs survive their class's NMS, the originals' loop
    `for c in classes: keep = nms(boxes[:, c], probs[:, c], thresh)`; `boxes` (P, 4) shared or (P, C, 4) per
    class; `plus_one`: maskrcnn-benchmark's "+1" areas, `suppress_equal`: suppress at IoU >= thresh (both as
    `boxes.nms_plus_one`). `kernel_order`: each class's boxes are visited as maskrcnn-benchmark's CPU nms kernel
    visits them (`kernel_rank`), not in torchvision's stable order; they differ only among equal scores.

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
    rank = kernel_rank(probs)[box_idx, cls_idx] if kernel_order else None
    kept = batched_nms(pair_boxes, probs[box_idx, cls_idx].float(), cls_idx,
                       suppression_threshold(thresh, suppress_equal), rank=rank)
    survived = torch.zeros_like(cand)
    survived[box_idx[kept], cls_idx[kept]] = True
    return survived


def loop_survivors(boxes: torch.Tensor, probs: torch.Tensor, thresh: float, *, plus_one: bool = False,
                   suppress_equal: bool = False, kernel_order: bool = False) -> torch.Tensor:
    """`nms_survivors` exact for every pair, by the originals' own loop: one torchvision nms per class. The exact
    passes that tie orders need (every candidate's score) use it: over all P x C pairs, one nms per class is much
    faster on the CPU than `nms_survivors` with no floor (bench/README.md, "selection.py")."""
    survived = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
    t = suppression_threshold(thresh, suppress_equal)
    shared = grown_plus_one(boxes.float()) if plus_one and boxes.dim() == 2 else boxes.float()
    orders = probs.float().cpu().sort(0, descending=True)[1].to(probs.device) if kernel_order else None  # kernel_rank
    ramp = -torch.arange(len(probs), dtype=torch.float32, device=probs.device)  # nms visits boxes in `orders`
    for c in range(probs.shape[1]):
        b = shared if boxes.dim() == 2 else (grown_plus_one(shared[:, c]) if plus_one else shared[:, c])
        if orders is None:
            survived[nms(b, probs[:, c].float(), t), c] = True
        else:
            o = orders[:, c]
            survived[o[nms(b[o], ramp, t)], c] = True
    return survived


def kernel_rank(probs: torch.Tensor) -> torch.Tensor:
    """(P, C) int64: each proposal's position in its class's visiting order in maskrcnn-benchmark's CPU nms kernel
    (MILVLG bua/caffe/modeling/layers/csrc/nms/nms_cpu.cpp: `scores.sort(0, /* descending=*/true)`): ATen's
    default sort, which is not stable, so equal scores (saturated 1.0s) come in an order that depends on the whole
    column. Computed on the CPU, as the kernel runs, whatever device `probs` is on."""
    order = probs.float().cpu().sort(0, descending=True)[1]
    rank = torch.empty_like(order)
    rank.scatter_(0, order, torch.arange(len(order))[:, None].expand_as(order).contiguous())
    return rank.to(probs.device)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, thresh: float,
                budget: int = 1 << 21, rank: torch.Tensor | None = None) -> torch.Tensor:
    """(n,) bool: the pairs that torchvision's CPU `nms(boxes[g], scores[g], thresh)` keeps, for every group g
    at once. Exact, which `torchvision.ops.batched_nms` is not: its coordinate offsets (float32) round the boxes
    and so the IoUs. Each group's greedy NMS, in the kernel's order (scores descending, equal scores by
    position: its stable sort) with its float32 IoU arithmetic (`_overlaps`), is the unique fixed point of
    `kept[j] = no kept i before j overlaps j` (suppression only runs forward in that order), reached by
    iterating from all kept in as many steps as the longest suppression chain. Groups run in chunks of
    similar size, padded, `budget` IoUs each: one host synchronisation per iteration and chunk. `rank`: each
    pair's place in its group's visiting order instead (`kernel_rank`)."""
    kept = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    if not len(scores):
        return kept
    order = torch.argsort(scores, descending=True, stable=True) if rank is None else torch.argsort(rank, stable=True)
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
