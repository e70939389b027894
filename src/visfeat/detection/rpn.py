"""Region proposal network for single-level (C4) feature maps.

Contract: `RPN(features, image_sizes)` -> per image (proposals (P, 4), objectness logits (P,)) in input-image
pixels, sorted by objectness, at most `post_nms_topk`. Follows detectron2's RPN as py-bottom-up-attention has it
(proposal_generator/rpn.py, rpn_outputs.py find_top_rpn_proposals, anchor_generator.py): anchors centred on
each cell corner (offset 0), top `pre_nms_topk` by logit, clip, drop empty boxes, NMS, keep `post_nms_topk`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from .boxes import BoxTransform, clip, nonempty


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
        self.register_buffer("cell_anchors", cell_anchors(spec.sizes, spec.ratios), persistent=False)
        self.rpn_head = RPNHead(cin, cin if spec.hidden == -1 else spec.hidden, len(self.cell_anchors))
        self.transform = BoxTransform(spec.weights)

    def anchors(self, h: int, w: int) -> torch.Tensor:
        s, dev = self.spec.stride, self.cell_anchors.device
        xs = torch.arange(self.spec.offset * s, w * s, step=s, dtype=torch.float32, device=dev)
        ys = torch.arange(self.spec.offset * s, h * s, step=s, dtype=torch.float32, device=dev)
        sy, sx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack((sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)), dim=1)
        return (shifts[:, None, :] + self.cell_anchors[None]).reshape(-1, 4)  # (H*W*A, 4), anchors inner

    def forward(self, features: torch.Tensor, image_sizes: list[tuple[int, int]],
                feature_sizes: list[tuple[int, int]] | None = None):
        """`feature_sizes`: each image's own extent on a padded batch's map; anchors outside it (which the image
        alone would not have) are not considered."""
        logits, deltas = self.rpn_head(features)
        n, a, h, w = logits.shape
        out = []
        for i, hw in enumerate(image_sizes):
            fh, fw = feature_sizes[i] if feature_sizes is not None else (h, w)
            lg = logits[i, :, :fh, :fw].permute(1, 2, 0).reshape(-1).float()  # (H, W, A) order
            dl = deltas[i, :, :fh, :fw].reshape(a, 4, fh, fw).permute(2, 3, 0, 1).reshape(-1, 4).float()
            props = self.transform.apply(dl, self.anchors(fh, fw))
            k = min(self.spec.pre_nms_topk, len(lg))
            scores, idx = lg.sort(descending=True)
            scores, boxes = scores[:k], clip(props[idx[:k]], hw)
            keep = nonempty(boxes, self.spec.min_size)
            boxes, scores = boxes[keep], scores[keep]
            keep = nms(boxes, scores, self.spec.nms_thresh)[: self.spec.post_nms_topk]
            out.append((boxes[keep], scores[keep]))
        return out
