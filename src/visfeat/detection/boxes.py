"""Box utilities shared by the RPN, the box head and the selection strategies.

Boxes are float tensors (R, 4) x1, y1, x2, y2. `offset` 0: widths x2 - x1, clip to [0, w] (detectron2, which
py-bottom-up-attention keeps: detectron2/modeling/box_regression.py, structures/boxes.py). `offset` 1: the
legacy pixel convention of maskrcnn-benchmark and its forks (modeling/box_coder.py and
structures/bounding_box.py TO_REMOVE = 1): widths x2 - x1 + 1, decoded x2 = ctr + w/2 - 1, clip to [0, w - 1].
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import nms

# detectron2/modeling/box_regression.py: _DEFAULT_SCALE_CLAMP
SCALE_CLAMP = math.log(1000.0 / 16)


class BoxTransform:
    """R-CNN delta decoding (dx, dy, dw, dh) with per-coordinate weights; dw/dh clamped at log(1000/16)."""

    def __init__(self, weights: tuple[float, float, float, float], scale_clamp: float = SCALE_CLAMP,
                 offset: int = 0):
        self.weights, self.scale_clamp, self.offset = weights, scale_clamp, offset

    def apply(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """deltas (R, K*4), boxes (R, 4) -> (R, K*4): K boxes per input box (class-specific regression)."""
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0] + self.offset
        heights = boxes[:, 3] - boxes[:, 1] + self.offset
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        out = torch.stack((pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                           pred_ctr_x + 0.5 * pred_w - self.offset, pred_ctr_y + 0.5 * pred_h - self.offset), dim=2)
        return out.reshape(deltas.shape)


def clip(boxes: torch.Tensor, hw: tuple[int, int], offset: int = 0) -> torch.Tensor:
    """Clamp x to [0, w - offset] and y to [0, h - offset] (detectron2 Boxes.clip: offset 0;
    maskrcnn-benchmark BoxList.clip_to_image: 1)."""
    h, w = hw
    x = boxes[..., 0::2].clamp(min=0, max=w - offset)
    y = boxes[..., 1::2].clamp(min=0, max=h - offset)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


def area(boxes: torch.Tensor, offset: int = 0) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)


def nms_plus_one(boxes: torch.Tensor, scores: torch.Tensor, thresh: float, suppress_equal: bool = False
                 ) -> torch.Tensor:
    """NMS with maskrcnn-benchmark's "+1" areas (its csrc nms kernels): torchvision nms on boxes grown by 1 at
    x2/y2, which gives the same IoUs. `suppress_equal`: suppress at IoU >= thresh (the CPU kernel; the CUDA one
    suppresses at >), done as > the float32 just below thresh. Kept indices in score order."""
    return nms(plus_one(boxes), scores.float(), suppression_threshold(thresh, suppress_equal))


def plus_one(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes grown by 1 at x2/y2 (float32): plain IoUs on them are the "+1" IoUs."""
    return boxes.float() + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device)


def suppression_threshold(thresh: float, suppress_equal: bool = False) -> float:
    """The `t` of torchvision's `IoU > t` test; `suppress_equal`: the float32 just below `thresh`, so that float32
    IoUs >= thresh are suppressed."""
    t = float(thresh)
    if suppress_equal:
        t32 = np.float32(thresh)
        if float(t32) < thresh:
            t32 = np.nextafter(t32, np.float32(np.inf))
        t = float(np.nextafter(t32, np.float32(-np.inf)))
    return t


def nms_legacy_cpu(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """maskrcnn-benchmark's CPU nms kernel (csrc/cpu/nms_cpu.cpp, vqa-maskrcnn-benchmark's too), exactly: boxes
    visited in `scores.sort(0, descending=True)` order (ATen's on the CPU, not stable: equal scores in its order),
    float32 "+1" arithmetic as the kernel does it (areas (x2 - x1 + 1) * (y2 - y1 + 1), w = max(0, min x2 - max x1
    + 1), IoU = inter / (area_i + area_j - inter): for thin or inverted boxes not the IoU of boxes grown by 1),
    suppressed when IoU >= float32(thresh); kept indices in ASCENDING INDEX order, as the kernel returns them.
    The greedy pass is the fixed point of `kept[j] = no kept i visited before j suppresses j` (select.batched_nms),
    on the boxes' device."""
    device = boxes.device
    if not len(boxes):
        return torch.zeros(0, dtype=torch.int64, device=device)
    order = scores.float().cpu().sort(0, descending=True)[1].to(device)
    x1, y1, x2, y2 = boxes.float()[order].unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    zero = torch.zeros((), dtype=torch.float32, device=device)
    w = torch.maximum(zero, torch.minimum(x2[:, None], x2[None, :]) - torch.maximum(x1[:, None], x1[None, :]) + 1)
    h = torch.maximum(zero, torch.minimum(y2[:, None], y2[None, :]) - torch.maximum(y1[:, None], y1[None, :]) + 1)
    inter = w * h
    over = (inter / (areas[:, None] + areas[None, :] - inter) >= np.float32(thresh)).triu(1).float()  # i hides j
    keep = torch.ones(len(order), dtype=torch.bool, device=device)
    while True:
        step = (keep.float() @ over) == 0
        if torch.equal(step, keep):
            break
        keep = step
    return order[keep].sort()[0]
