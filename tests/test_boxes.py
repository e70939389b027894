"""Contracts of `detection.boxes`: the two pixel conventions of delta decoding, clipping, areas and NMS.

offset 0: detectron2/modeling/box_regression.py (widths x2 - x1); offset 1: maskrcnn_benchmark/modeling/box_coder.py
(widths x2 - x1 + 1, decoded x2 = ctr + w/2 - 1), clip_to_image to w - 1 (structures/bounding_box.py).
"""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import nms

from visfeat.detection.boxes import SCALE_CLAMP, BoxTransform, area, clip, nms_plus_one, nonempty


def decode(offset: int, deltas, box, weights=(1.0, 1.0, 1.0, 1.0)) -> list[float]:
    out = BoxTransform(weights, offset=offset).apply(torch.tensor([deltas], dtype=torch.float32),
                                                     torch.tensor([box], dtype=torch.float32))
    return out[0].tolist()


@pytest.mark.parametrize("offset", [0, 1])
def test_zero_deltas_give_the_box_back(offset):
    assert decode(offset, [0, 0, 0, 0], [3, 4, 20, 30]) == pytest.approx([3, 4, 20, 30])


def test_doubling_the_width_in_each_convention():
    # offset 0: w = 10, ctr 5 -> w 20 -> (-5, 15); offset 1: w = 9 - 0 + 1 = 10, ctr 5 -> (-5, 5 + 10 - 1)
    log2 = math.log(2)
    assert decode(0, [0, 0, log2, log2], [0, 0, 10, 10]) == pytest.approx([-5, -5, 15, 15])
    assert decode(1, [0, 0, log2, log2], [0, 0, 9, 9]) == pytest.approx([-5, -5, 14, 14])


def test_shift_is_scaled_by_the_plus_one_width():
    assert decode(0, [0.5, 0, 0, 0], [0, 0, 10, 10]) == pytest.approx([5, 0, 15, 10])
    assert decode(1, [0.5, 0, 0, 0], [0, 0, 9, 9]) == pytest.approx([5, 0, 14, 9])


def test_weights_divide_and_dw_is_clamped_from_above():
    # detectron2 _DEFAULT_SCALE_CLAMP = log(1000 / 16); ROI weights (10, 10, 5, 5)
    assert SCALE_CLAMP == pytest.approx(math.log(1000 / 16))
    assert decode(0, [10, 0, 0, 0], [0, 0, 10, 10], (10, 10, 5, 5)) == pytest.approx([10, 0, 20, 10])
    big = decode(0, [0, 0, 100, -100], [0, 0, 16, 16])
    assert big[2] - big[0] == pytest.approx(1000, rel=1e-5)  # clamped: 16 * 1000 / 16
    assert big[3] - big[1] == pytest.approx(16 * math.exp(-100), abs=1e-6)  # no clamp from below


def test_class_specific_deltas_give_k_boxes_per_row():
    t = BoxTransform((1.0, 1.0, 1.0, 1.0))
    deltas = torch.zeros(2, 12)
    deltas[:, 4] = 1.0  # class 1's dx
    out = t.apply(deltas, torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20]])).view(2, 3, 4)
    assert out[0, 1].tolist() == pytest.approx([10, 0, 20, 10]) and out[0, 0].tolist() == pytest.approx([0, 0, 10, 10])
    assert out[1, 1].tolist() == pytest.approx([20, 0, 40, 20])


def test_clip_to_w_or_w_minus_one():
    boxes = torch.tensor([[-5.0, -5, 100, 100]])
    assert clip(boxes, (30, 40)).tolist() == [[0, 0, 40, 30]]  # (h, w)
    assert clip(boxes, (30, 40), offset=1).tolist() == [[0, 0, 39, 29]]


def test_area_and_nonempty():
    boxes = torch.tensor([[0.0, 0, 9, 4], [3, 3, 3, 8]])
    assert area(boxes).tolist() == [36, 0] and area(boxes, offset=1).tolist() == [50, 6]
    assert nonempty(boxes).tolist() == [True, False]


def test_nms_plus_one_uses_plus_one_ious():
    boxes = torch.tensor([[0.0, 0, 9, 9], [1, 0, 10, 9]])  # IoU 72/90 = 0.8 plain, 90/110 = 0.818 with "+1"
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.81).tolist() == [0, 1]
    assert nms_plus_one(boxes, scores, 0.81).tolist() == [0]


def test_nms_plus_one_suppress_equal():
    """maskrcnn-benchmark's CPU kernel suppresses at IoU >= thresh, torchvision (and the CUDA kernel) at >."""
    boxes = torch.tensor([[0.0, 0, 2, 0], [1, 0, 3, 0]])  # "+1": 3x1 boxes sharing 2x1, IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert nms_plus_one(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms_plus_one(boxes, scores, 0.5, suppress_equal=True).tolist() == [0]
