"""Box utilities shared by the RPN, the box head and the selection strategies.

Boxes are float tensors (R, 4) x1, y1, x2, y2, with widths x2 - x1 (no +1: detectron2 convention, which
py-bottom-up-attention keeps: detectron2/modeling/box_regression.py, structures/boxes.py).
"""
from __future__ import annotations

import math

import torch

# detectron2/modeling/box_regression.py: _DEFAULT_SCALE_CLAMP
SCALE_CLAMP = math.log(1000.0 / 16)


class BoxTransform:
    """R-CNN delta decoding (dx, dy, dw, dh) with per-coordinate weights; dw/dh clamped at log(1000/16)."""

    def __init__(self, weights: tuple[float, float, float, float], scale_clamp: float = SCALE_CLAMP):
        self.weights, self.scale_clamp = weights, scale_clamp

    def apply(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """deltas (R, K*4), boxes (R, 4) -> (R, K*4): K boxes per input box (class-specific regression)."""
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
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
                           pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h), dim=2)
        return out.reshape(deltas.shape)


def clip(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Clamp x to [0, w] and y to [0, h] (detectron2 Boxes.clip: no -1)."""
    h, w = hw
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)
