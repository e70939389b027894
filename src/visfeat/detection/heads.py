"""RoI box heads: pooling into a res5 head (C4) and the class / box / attribute predictors.

Contract: `Res5ROIHeads(feature_map, rois)` -> (R, C) pooled region features, where `rois` is (R, 5) rows
(batch index, x1, y1, x2, y2) in input pixels; `MLPHead(maps, rois)` -> (fc6, fc7) (FPN models);
`Predictor(features)` -> class logits (R, K+1), box deltas (R, 4K, 4(K+1) or 4) and, with attributes,
attribute logits (R, A+1).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align, roi_pool

from visfeat.detection.boxes import area
from visfeat.detection.resnet import ResNetSpec, make_stage


class Pooler(nn.Module):
    """One-level RoI pooling: ROIPool (Caffe max pooling, rounded bins), ROIAlign (aligned=False, maskrcnn-benchmark
    and detectron2 "ROIAlign") or ROIAlignV2 (aligned=True)."""

    def __init__(self, kind: str, resolution: int, scale: float, sampling_ratio: int = 0):
        super().__init__()
        if kind not in ("ROIPool", "ROIAlign", "ROIAlignV2"):
            raise ValueError(f"unknown pooler {kind!r}: ROIPool, ROIAlign or ROIAlignV2")
        self.kind, self.resolution, self.scale, self.sampling_ratio = kind, resolution, scale, sampling_ratio

    def forward(self, x: torch.Tensor, rois: torch.Tensor, extents: list[tuple[int, int]] | None = None
                ) -> torch.Tensor:
        """`extents`: each image's own (h, w) on a padded batch's map; its RoIs are pooled from that crop, as
        alone (ROIAlign clamps samples at the map's last row/column, so the padding would otherwise leak in)."""
        return per_image(self._pool, x, rois.float(), extents, self.scale)  # float32 coordinates under autocast too

    def _pool(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if self.kind == "ROIPool":
            # torchvision's roi_pool has no CPU autocast rule (roi_align has: float32), so by hand
            return roi_pool(x.float(), rois, self.resolution, self.scale).to(x.dtype)
        return roi_align(x, rois, self.resolution, self.scale, self.sampling_ratio, aligned=self.kind == "ROIAlignV2")


def per_image(pool, x: torch.Tensor, rois: torch.Tensor, extents: list[tuple[int, int]] | None,
              scale: float) -> torch.Tensor:
    """pool(x, rois), each image's RoIs as on its own crop x[i, :, :h, :w] when `extents` is given. A RoI that
    stays more than a map pixel inside its crop (at `scale`) reads nothing beyond it (ROIPool's bins and
    ROIAlign's bilinear samples lie within the RoI, widened to 1 pixel), so those pool from the whole map in one
    call, bit for bit as on the crop; only RoIs at a crop's bottom or right edge pool per image."""
    if extents is None or all(tuple(e) == tuple(x.shape[2:]) for e in extents):
        return pool(x, rois)
    hw = torch.tensor(extents, dtype=torch.float32, device=rois.device)[rois[:, 0].long()]  # (R, 2)
    r = rois[:, 1:].float() * scale
    inside = ((torch.maximum(r[:, 2], r[:, 0] + 1) + 1 < hw[:, 1] - 1)
              & (torch.maximum(r[:, 3], r[:, 1] + 1) + 1 < hw[:, 0] - 1))
    out = None
    inner = torch.nonzero(inside).squeeze(1)
    if len(inner):
        y = pool(x, rois[inner])
        out = y.new_zeros((len(rois), *y.shape[1:]))
        out[inner] = y
    edge = torch.nonzero(~inside).squeeze(1)
    images = rois[edge, 0].long()
    for i in torch.unique(images).tolist():
        idx = edge[images == i]
        h, w = extents[i]
        r = rois[idx].clone()
        r[:, 0] = 0
        y = pool(x[i:i + 1, :, :h, :w], r)
        if out is None:
            out = y.new_zeros((len(rois), *y.shape[1:]))
        out[idx] = y
    return out if out is not None else pool(x, rois)


class LevelPooler(nn.Module):
    """ROIAlign (aligned=False) over FPN levels, each RoI on the level the FPN paper's heuristic gives it, as
    maskrcnn-benchmark's modeling/poolers.py LevelMapper does: floor(4 + log2(sqrt(area) / 224 + 1e-6)) with
    "+1" areas, clamped to the levels there are."""

    def __init__(self, resolution: int, scales: tuple[float, ...], sampling_ratio: int):
        super().__init__()
        self.resolution, self.scales, self.sampling_ratio = resolution, scales, sampling_ratio
        # poolers.py: k_min/k_max from the first/last scale; LevelMapper canonical_scale 224, level 4, eps 1e-6
        self.k_min = round(-math.log2(scales[0]))
        self.k_max = round(-math.log2(scales[-1]))

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        s = torch.sqrt(area(boxes.float(), offset=1))
        lvl = torch.floor(4 + torch.log2(s / 224 + 1e-6))
        return torch.clamp(lvl, min=self.k_min, max=self.k_max).to(torch.int64) - self.k_min

    def forward(self, maps: list[torch.Tensor], rois: torch.Tensor,
                extents: list[list[tuple[int, int]]] | None = None) -> torch.Tensor:
        """`extents`: per level, each image's own (h, w) on it (see `per_image`)."""
        rois = rois.float()  # float32 coordinates and levels under autocast too (roi_align runs in float32)
        levels = self.levels(rois[:, 1:])
        out = maps[0].new_zeros((len(rois), maps[0].shape[1], self.resolution, self.resolution))
        for lvl, (x, scale) in enumerate(zip(maps, self.scales)):
            idx = torch.nonzero(levels == lvl).squeeze(1)
            if len(idx):
                def pool(m, r, scale=scale):
                    return roi_align(m, r, self.resolution, scale, self.sampling_ratio, aligned=False)
                out[idx] = per_image(pool, x, rois[idx], None if extents is None else extents[lvl], scale)
        return out


class MLPHead(nn.Module):
    """maskrcnn-benchmark FPN2MLPFeatureExtractor (roi_box_feature_extractors.py): pooled (C, 7, 7) flattened,
    fc6 + ReLU, fc7 + ReLU. Returns both: VMB's region feature is fc6, the predictor reads fc7."""

    def __init__(self, pooler: LevelPooler, cin: int, dim: int):
        super().__init__()
        self.pooler = pooler
        self.fc6 = nn.Linear(cin * pooler.resolution ** 2, dim)
        self.fc7 = nn.Linear(dim, dim)

    def forward(self, maps: list[torch.Tensor], rois: torch.Tensor, extents=None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pooler(maps, rois, extents).flatten(1)
        fc6 = F.relu(self.fc6(x))
        return fc6, F.relu(self.fc7(fc6))


class Res5ROIHeads(nn.Module):
    """C4 box head (detectron2 Res5ROIHeads): pool from res4, run res5 on each RoI, mean over its H x W; then
    the predictor. `forward` returns the pooled region features (R, C)."""

    def __init__(self, spec: ResNetSpec, pooler: Pooler, predictor: "Predictor"):
        super().__init__()
        self.pooler = pooler
        self.res5 = make_stage(spec, 5)
        self.box_predictor = predictor

    def forward(self, x: torch.Tensor, rois: torch.Tensor, extents=None) -> torch.Tensor:
        return self.res5(self.pooler(x, rois, extents)).mean(dim=(2, 3))


class Predictor(nn.Module):
    """detectron2 FastRCNNOutputLayers; with `num_attrs`, py-bottom-up-attention's attribute branch
    (roi_heads/fast_rcnn.py): the argmax class over all K+1 logits (background included) is embedded
    (C/8), concatenated to the feature, fc_attr (C/4) + ReLU, attr_score (A+1)."""

    def __init__(self, cin: int, num_classes: int, class_agnostic: bool = False, num_attrs: int = 0,
                 box_classes: int | None = None):
        """`box_classes`: how many classes the regression predicts (default: K, or 1 when class-agnostic;
        maskrcnn-benchmark predicts K + 1, background included)."""
        super().__init__()
        self.cls_score = nn.Linear(cin, num_classes + 1)
        if box_classes is None:
            box_classes = 1 if class_agnostic else num_classes
        self.bbox_pred = nn.Linear(cin, 4 * box_classes)
        self.num_attrs = num_attrs
        if num_attrs:
            self.cls_embedding = nn.Embedding(num_classes + 1, cin // 8)
            self.fc_attr = nn.Linear(cin + cin // 8, cin // 4)
            self.attr_score = nn.Linear(cin // 4, num_attrs + 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        scores = self.cls_score(x)
        deltas = self.bbox_pred(x)
        attrs = None
        if self.num_attrs:
            emb = self.cls_embedding(scores.argmax(-1))
            attrs = self.attr_score(F.relu(self.fc_attr(torch.cat([x, emb.to(x.dtype)], -1))))
        return scores, deltas, attrs
