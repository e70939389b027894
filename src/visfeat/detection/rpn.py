"""Region proposal network over one (C4) or several (FPN) feature maps.

Contract: `RPN(features, image_sizes, feature_sizes)` -> per image (proposals (P, 4), objectness (P,)) in
input-image pixels, sorted by objectness, at most `post_nms_topk` (`fpn_post_nms_topk` over levels).
`features` is one map or a list (one per level, finest first); `image_sizes` are what proposals are clipped to;
`feature_sizes` each image's own extent on each map (anchors outside it are not considered, so a padded batch
gives each image its own proposals).

Two conventions, by `RPNSpec.legacy`:
- detectron2 (py-bottom-up-attention: proposal_generator/rpn.py, rpn_outputs.py find_top_rpn_proposals,
  anchor_generator.py): anchors centred on each cell corner, sizes outer / ratios inner, exact floats; top
  `pre_nms_topk` logits, clip to [0, w], drop empty boxes, NMS, keep `post_nms_topk`.
- maskrcnn-benchmark (modeling/rpn/anchor_generator.py generate_anchors, rpn/inference.py RPNPostProcessor):
  Detectron's rounded anchors centred on (stride - 1) / 2, ratios outer / sizes inner; per level the top
  `pre_nms_topk` sigmoid scores, "+1" decoding, clip to [0, w - 1], NMS keeping `post_nms_topk`; with several
  levels the best `fpn_post_nms_topk` of their union per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from visfeat.detection.boxes import BoxTransform, clip, nms_legacy_cpu, nonempty


@dataclass(frozen=True)
class RPNSpec:
    sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    stride: int = 16
    offset: float = 0.0  # detectron2 config/defaults.py ANCHOR_GENERATOR.OFFSET
    hidden: int = -1  # conv width; -1 = the input's (py-bottom-up-attention PROPOSAL_GENERATOR.HID_CHANNELS)
    pre_nms_topk: int = 6000  # detectron2 config/defaults.py RPN.PRE_NMS_TOPK_TEST
    post_nms_topk: int = 1000  # RPN.POST_NMS_TOPK_TEST
    nms_thresh: float = 0.7  # RPN.NMS_THRESH
    min_size: float = 0.0  # PROPOSAL_GENERATOR.MIN_SIZE
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # RPN.BBOX_REG_WEIGHTS
    legacy: bool = False  # maskrcnn-benchmark conventions (module docstring)
    nms_plus_one: bool = False  # NMS with "+1" areas (vqa-maskrcnn-benchmark's own kernel)
    fpn_strides: tuple[int, ...] = ()  # one per level (FPN, one size per level); () = single map at `stride`
    fpn_post_nms_topk: int = 1000  # maskrcnn-benchmark config/defaults.py RPN.FPN_POST_NMS_TOP_N_TEST

    @property
    def levels(self) -> tuple[int, ...]:
        return self.fpn_strides or (self.stride,)


def cell_anchors(sizes, ratios) -> torch.Tensor:
    """(A, 4) anchors centred on 0, sizes outer and ratios inner (detectron2 generate_cell_anchors)."""
    out = []
    for size in sizes:
        area = size ** 2.0
        for r in ratios:
            w = math.sqrt(area / r)
            h = r * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(out, dtype=torch.float32)


def legacy_cell_anchors(stride: int, sizes, ratios) -> torch.Tensor:
    """Detectron's generate_anchors as maskrcnn-benchmark has it (rpn/anchor_generator.py): the
    (0, 0, stride - 1, stride - 1) window, widths rounded per ratio, then scaled by size / stride; ratios outer."""
    base = float(stride)
    ctr = 0.5 * (base - 1)
    out = []
    for r in ratios:
        ws = np.round(np.sqrt(base * base / r))
        hs = np.round(ws * r)
        for s in sizes:
            w, h = ws * s / base, hs * s / base
            out.append([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)])
    return torch.tensor(np.asarray(out, np.float64)).float()


class RPNHead(nn.Module):
    def __init__(self, cin: int, hidden: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(hidden, num_anchors * 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = F.relu(self.conv(x))
        return self.objectness_logits(t), self.anchor_deltas(t)


class RPN(nn.Module):
    def __init__(self, cin: int, spec: RPNSpec):
        super().__init__()
        self.spec = spec
        if spec.fpn_strides:
            if len(spec.sizes) != len(spec.fpn_strides):
                raise ValueError("FPN RPN: one anchor size per level")
            cells = [legacy_cell_anchors(s, (size,), spec.ratios) for s, size in zip(spec.fpn_strides, spec.sizes)]
        elif spec.legacy:
            cells = [legacy_cell_anchors(spec.stride, spec.sizes, spec.ratios)]
        else:
            cells = [cell_anchors(spec.sizes, spec.ratios)]
        for i, c in enumerate(cells):
            self.register_buffer(f"cell_anchors_{i}", c, persistent=False)
        self.rpn_head = RPNHead(cin, cin if spec.hidden == -1 else spec.hidden, len(cells[0]))
        self.transform = BoxTransform(spec.weights, offset=1 if spec.legacy else 0)

    @property
    def cell_anchors(self) -> torch.Tensor:
        """The first level's cell anchors (the only one for C4)."""
        return self.cell_anchors_0

    def level_cell_anchors(self) -> list[torch.Tensor]:
        return [getattr(self, f"cell_anchors_{i}") for i in range(len(self.spec.levels))]

    def anchors(self, h: int, w: int, level: int = 0) -> torch.Tensor:
        s = self.spec.levels[level]
        cells = getattr(self, f"cell_anchors_{level}")
        xs = torch.arange(self.spec.offset * s, w * s, step=s, dtype=torch.float32, device=cells.device)
        ys = torch.arange(self.spec.offset * s, h * s, step=s, dtype=torch.float32, device=cells.device)
        sy, sx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)), dim=1)
        return (shifts[:, None, :] + cells[None]).reshape(-1, 4)  # (H*W*A, 4), anchors inner

    def _nms(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.spec.nms_plus_one:  # vqa-maskrcnn-benchmark's own kernel, kept boxes in index (= topk) order
            return nms_legacy_cpu(boxes, scores, self.spec.nms_thresh)
        return nms(boxes, scores, self.spec.nms_thresh)

    def _level(self, lg: torch.Tensor, dl: torch.Tensor, fh: int, fw: int, level: int, hw):
        """One image on one level: logits (A, fh, fw), deltas (A*4, fh, fw) -> (boxes, scores) after NMS."""
        a = lg.shape[0]
        lg = lg.permute(1, 2, 0).reshape(-1).float()  # (H, W, A) order
        dl = dl.reshape(a, 4, fh, fw).permute(2, 3, 0, 1).reshape(-1, 4).float()
        if self.spec.legacy:
            lg = lg.sigmoid()  # maskrcnn-benchmark ranks and keeps sigmoid scores
        k = min(self.spec.pre_nms_topk, len(lg))
        if self.spec.legacy:  # rpn/inference.py: objectness.topk(pre_nms_top_n, sorted=True), the same op, so
            scores, idx = lg.topk(k, sorted=True)  # equal (saturated) sigmoids keep the original's order
        else:
            scores, idx = lg.sort(descending=True, stable=True)
            scores, idx = scores[:k], idx[:k]
        anchors = self.anchors(fh, fw, level)[idx]
        if self.spec.legacy:  # decode, clip to w - 1, remove_small_boxes: "+1" sides >= min_size; with min_size 0
            # it drops only boxes inverted by rounding (exp(dw) ~ 0: x2 - x1 + 1 one ulp below 0)
            boxes = clip(self.transform.apply(dl[idx], anchors), hw, offset=1)
            keep = ((boxes[:, 2] - boxes[:, 0] + 1) >= self.spec.min_size) & (
                (boxes[:, 3] - boxes[:, 1] + 1) >= self.spec.min_size)
            boxes, scores = boxes[keep], scores[keep]
        else:
            boxes = clip(self.transform.apply(dl[idx], anchors), hw)
            keep = nonempty(boxes, self.spec.min_size)
            boxes, scores = boxes[keep], scores[keep]
        keep = self._nms(boxes, scores)[: self.spec.post_nms_topk]
        return boxes[keep], scores[keep]

    def forward(self, features, image_sizes: list[tuple[int, int]],
                feature_sizes: list[list[tuple[int, int]]] | list[tuple[int, int]] | None = None):
        maps = list(features) if isinstance(features, (list, tuple)) else [features]
        if feature_sizes is not None and not isinstance(feature_sizes[0][0], (list, tuple)):
            feature_sizes = [feature_sizes]  # single level: a list of (h, w) per image
        heads = [self.rpn_head(x) for x in maps]
        out = []
        for i, hw in enumerate(image_sizes):
            boxes, scores = [], []
            for lvl, (logits, deltas) in enumerate(heads):
                fh, fw = feature_sizes[lvl][i] if feature_sizes is not None else logits.shape[2:]
                b, s = self._level(logits[i, :, :fh, :fw], deltas[i, :, :fh, :fw], fh, fw, lvl, hw)
                boxes.append(b)
                scores.append(s)
            boxes, scores = torch.cat(boxes), torch.cat(scores)
            if len(heads) > 1:  # maskrcnn-benchmark select_over_all_levels (test): per image top-k
                k = min(self.spec.fpn_post_nms_topk, len(scores))
                if self.spec.legacy:  # torch.topk(objectness, k, sorted=True): equal scores in the original's order
                    scores, idx = scores.topk(k, sorted=True)
                else:
                    scores, idx = scores.sort(descending=True, stable=True)
                    scores, idx = scores[:k], idx[:k]
                boxes = boxes[idx]
            out.append((boxes, scores))
        return out
