"""Contracts of `detection.rpn`: anchors, the (y, x, anchor) order of logits and deltas, decoding, clipping, top-k.

Numbers come from the originals: maskrcnn_benchmark/modeling/rpn/anchor_generator.py (generate_anchors, Detectron's
rounded anchors, ratio-major) and detectron2/modeling/anchor_generator.py (exact floats, size-major); the fixtures'
anchor buffers were written by those originals.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from visfeat.detection.rpn import RPN, RPNSpec, cell_anchors, legacy_cell_anchors

FIXTURES = Path(__file__).parent / "fixtures"


class FixedHead(nn.Module):
    """Stands in for RPNHead: the same (logits, deltas) whatever the input, per map size for FPN levels."""

    def __init__(self, outputs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.outputs = outputs

    def forward(self, x):
        return self.outputs[tuple(x.shape[2:])]


def rpn_with(spec: RPNSpec, logits: torch.Tensor, deltas: torch.Tensor) -> RPN:
    rpn = RPN(4, spec)
    rpn.rpn_head = FixedHead({tuple(logits.shape[2:]): (logits, deltas)})
    return rpn


def state_dict(name: str) -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)["model"]


# --- anchors -------------------------------------------------------------------------------------------------

def test_legacy_cell_anchors_are_detectrons_rounded_ratio_major():
    a = legacy_cell_anchors(16, (32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
    assert a.shape == (15, 4)
    # maskrcnn_benchmark/modeling/rpn/anchor_generator.py: window (0, 0, 15, 15), ratio outer, size inner
    assert a[0].tolist() == [-15, -4, 30, 19]  # ratio 0.5, size 32
    assert a[5].tolist() == [-8, -8, 23, 23]  # ratio 1, size 32
    assert a[10].tolist() == [-3, -14, 18, 29]  # ratio 2, size 32
    assert a[4].tolist() == [-360, -184, 375, 199]  # ratio 0.5, size 512
    # as scene_graph_benchmark computed and stored them (VinVL fixture)
    ref = np.load(FIXTURES / "vinvl/reference.npz")["cell_anchors"]
    np.testing.assert_array_equal(a.numpy(), ref)
    np.testing.assert_array_equal(a, state_dict("vinvl/tiny_vinvl.pth")["module.rpn.anchor_generator.cell_anchors.0"])


def test_legacy_fpn_level_anchors_match_vqa_maskrcnn_benchmark():
    spec = RPNSpec(sizes=(32, 64, 128, 256, 512), fpn_strides=(4, 8, 16, 32, 64), legacy=True)
    levels = RPN(4, spec).level_cell_anchors()
    sd = state_dict("vmb/tiny_x152_fpn.pth")
    assert len(levels) == 5
    for i, a in enumerate(levels):
        np.testing.assert_array_equal(a, sd[f"module.rpn.anchor_generator.cell_anchors.{i}"])
    assert levels[0].tolist() == [[-22, -10, 25, 13], [-14, -14, 17, 17], [-10, -22, 13, 25]]  # stride 4, size 32


def test_fpn_needs_one_size_per_level():
    with pytest.raises(ValueError, match="one anchor size per level"):
        RPN(4, RPNSpec(sizes=(32, 64), fpn_strides=(4, 8, 16)))


def test_detectron2_cell_anchors_are_exact_and_size_major():
    a = cell_anchors((32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
    # detectron2/modeling/anchor_generator.py generate_cell_anchors: w = sqrt(s^2 / r), h = r * w, centred on 0
    w, h = math.sqrt(32 ** 2 / 0.5), 0.5 * math.sqrt(32 ** 2 / 0.5)
    np.testing.assert_allclose(a[0].tolist(), [-w / 2, -h / 2, w / 2, h / 2], rtol=1e-6)
    assert a[1].tolist() == [-16, -16, 16, 16]  # size 32, ratio 1: sizes outer, ratios inner
    assert a[4].tolist() == [-32, -32, 32, 32]  # size 64, ratio 1
    # as detectron2 stored them in grid-feats-vqa's checkpoint
    ref = state_dict("gridfeats/tiny_x152.pth")["proposal_generator.anchor_generator.cell_anchors.0"]
    torch.testing.assert_close(a, ref, rtol=0, atol=1e-5)


def test_rpn_builds_the_convention_its_spec_names():
    sizes, ratios = (64, 128, 256, 512), (0.5, 1.0, 2.0)
    assert torch.equal(RPN(4, RPNSpec(sizes=sizes)).cell_anchors, cell_anchors(sizes, ratios))
    assert torch.equal(RPN(4, RPNSpec(sizes=sizes, legacy=True)).cell_anchors, legacy_cell_anchors(16, sizes, ratios))
    assert RPN(4, RPNSpec(sizes=sizes)).rpn_head.objectness_logits.out_channels == 12
    assert RPN(4, RPNSpec(sizes=sizes)).rpn_head.anchor_deltas.out_channels == 48


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_anchor_grid_is_y_x_anchor_ordered(offset):
    rpn = RPN(4, RPNSpec(sizes=(32, 64), ratios=(0.5, 1.0, 2.0), stride=16, offset=offset))
    h, w, cells = 3, 5, rpn.cell_anchors
    grid = rpn.anchors(h, w).view(h, w, len(cells), 4)
    for i in range(h):
        for j in range(w):
            shift = torch.tensor([j, i, j, i], dtype=torch.float32) * 16 + offset * 16
            torch.testing.assert_close(grid[i, j], cells + shift, rtol=0, atol=0)


# --- the head's outputs: order, decoding, clipping ----------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_logits_and_deltas_are_read_in_y_x_anchor_order(legacy):
    """Every (anchor, y, x) gets a distinct logit and dx; each proposal must be its own anchor moved by its dx."""
    a, h, w, stride = 3, 3, 4, 16
    spec = RPNSpec(sizes=(8,), stride=stride, legacy=legacy, pre_nms_topk=1000, post_nms_topk=1000, nms_thresh=1.0)
    code = torch.arange(a * h * w, dtype=torch.float32).view(1, a, h, w)  # code = (a * h + y) * w + x
    logits = code / 10 - 2
    deltas = torch.zeros(1, a * 4, h, w)
    deltas[0, 0::4] = code[0] / 1000  # dx of each anchor, channels (anchor, coordinate)
    rpn = rpn_with(spec, logits, deltas)
    image = (h * stride, w * stride)
    ((boxes, scores),) = rpn(torch.zeros(1, 4, h, w), [image])
    assert len(boxes) == a * h * w
    plus = 1 if legacy else 0
    cells = rpn.cell_anchors
    for box, score in zip(boxes, scores):
        c = int(round(float((torch.logit(score) if legacy else score) + 2) * 10))
        k, x = divmod(c, w)
        k, y = divmod(k, h)
        anchor = cells[k] + torch.tensor([x, y, x, y], dtype=torch.float32) * stride
        dx = c / 1000 * (anchor[2] - anchor[0] + plus)
        expected = anchor + torch.tensor([dx, 0, dx, 0])
        expected[0::2] = expected[0::2].clamp(0, image[1] - plus)
        expected[1::2] = expected[1::2].clamp(0, image[0] - plus)
        torch.testing.assert_close(box, expected, rtol=0, atol=1e-4)
    assert torch.all(scores[:-1] >= scores[1:])  # sorted by objectness


@pytest.mark.parametrize("legacy", [False, True])
def test_scores_are_logits_or_sigmoids(legacy):
    logits = torch.tensor([[[[1.5]]]])
    rpn = rpn_with(RPNSpec(sizes=(8,), ratios=(1.0,), legacy=legacy), logits, torch.zeros(1, 4, 1, 1))
    ((_, scores),) = rpn(torch.zeros(1, 4, 1, 1), [(16, 16)])
    # maskrcnn_benchmark/modeling/rpn/inference.py ranks sigmoid scores; detectron2 find_top_rpn_proposals logits
    assert scores.tolist() == pytest.approx([torch.sigmoid(logits).item() if legacy else 1.5])


@pytest.mark.parametrize("legacy, limit", [(False, 0), (True, 1)])
def test_proposals_clip_to_w_or_w_minus_one(legacy, limit):
    """A box decoded far past the image: [0, w] in detectron2 (Boxes.clip), [0, w - 1] in maskrcnn-benchmark
    (BoxList.clip_to_image)."""
    deltas = torch.tensor([0.0, 0.0, 5.0, 5.0]).view(1, 4, 1, 1)
    rpn = rpn_with(RPNSpec(sizes=(16,), ratios=(1.0,), stride=16, legacy=legacy), torch.ones(1, 1, 1, 1), deltas)
    ((boxes, _),) = rpn(torch.zeros(1, 4, 1, 1), [(30, 40)])
    assert boxes.tolist() == [[0, 0, 40 - limit, 30 - limit]]


def test_pre_and_post_nms_topk():
    a, h, w = 3, 4, 4
    logits = torch.randn(1, a, h, w, generator=torch.Generator().manual_seed(0))
    spec = RPNSpec(sizes=(8,), pre_nms_topk=10, post_nms_topk=1000, nms_thresh=1.0)
    ((boxes, scores),) = rpn_with(spec, logits, torch.zeros(1, a * 4, h, w))(torch.zeros(1, 4, h, w), [(64, 64)])
    assert len(boxes) == 10 and scores.tolist() == logits.flatten().sort(descending=True).values[:10].tolist()
    spec = RPNSpec(sizes=(8,), pre_nms_topk=10, post_nms_topk=4, nms_thresh=1.0)
    ((boxes, scores),) = rpn_with(spec, logits, torch.zeros(1, a * 4, h, w))(torch.zeros(1, 4, h, w), [(64, 64)])
    assert len(boxes) == 4 and scores.tolist() == logits.flatten().sort(descending=True).values[:4].tolist()


def test_nms_suppresses_overlaps():
    logits = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)  # two anchors at one place: sizes 16 and 17 overlap 0.89
    spec = RPNSpec(sizes=(16, 17), ratios=(1.0,), nms_thresh=0.7)
    ((boxes, scores),) = rpn_with(spec, logits, torch.zeros(1, 8, 1, 1))(torch.zeros(1, 4, 1, 1), [(64, 64)])
    assert scores.tolist() == [2.0]


def test_feature_sizes_keep_anchors_inside_each_images_extent():
    """A padded batch: anchors over the padding of a smaller image are never proposals for it."""
    a, h, w = 3, 3, 4
    logits = torch.zeros(2, a, h, w)
    logits[:, :, 2, :] = 10  # the best logits lie in row 2 and column 3, outside image 0's 2 x 3 extent
    logits[:, :, :, 3] = 10
    spec = RPNSpec(sizes=(8,), pre_nms_topk=1000, post_nms_topk=1000, nms_thresh=1.0)
    out = rpn_with(spec, logits, torch.zeros(2, a * 4, h, w))(torch.zeros(2, 4, h, w), [(32, 48), (48, 64)],
                                                              [(2, 3), (3, 4)])
    (b0, s0), (b1, s1) = out
    assert len(b0) == 2 * 3 * a and torch.all(s0 == 0)
    assert len(b1) == h * w * a and int((s1 == 10).sum()) == (h + w - 1) * a


@pytest.mark.parametrize("legacy", [False, True])
def test_fpn_levels_are_pooled_then_cut_to_fpn_post_nms_topk(legacy):
    """maskrcnn_benchmark/modeling/rpn/inference.py select_over_all_levels: the best of all levels' proposals."""
    maps = [(4, 4), (2, 2)]
    outputs = {hw: (torch.full((1, 1, *hw), float(lvl)), torch.zeros(1, 4, *hw)) for lvl, hw in enumerate(maps)}
    outputs[(2, 2)][0][0, 0, 1, 1] = 5.0
    spec = RPNSpec(sizes=(8, 16), ratios=(1.0,), fpn_strides=(8, 16), legacy=legacy, pre_nms_topk=1000,
                   post_nms_topk=1000, fpn_post_nms_topk=3, nms_thresh=1.0)
    rpn = RPN(4, spec)
    rpn.rpn_head = FixedHead(outputs)
    ((boxes, scores),) = rpn([torch.zeros(1, 4, *hw) for hw in maps], [(32, 32)])
    assert len(boxes) == 3
    raw = torch.tensor([5.0, 1.0, 1.0])
    torch.testing.assert_close(scores, raw.sigmoid() if legacy else raw)
    assert boxes[0].tolist() == (rpn.level_cell_anchors()[1][0] + 16).clamp(0, 32 - legacy).tolist()


def test_nms_plus_one_flag():
    """vqa-maskrcnn-benchmark's own NMS kernel: "+1" areas. Boxes 10 and 12 px wide about one centre overlap
    100/144 = 0.69 plainly, 121/169 = 0.72 with "+1"; at 0.7 only the "+1" NMS suppresses."""
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, :, 1, 1] = torch.tensor([2.0, 1.0])
    for plus_one, n in ((False, 2), (True, 1)):
        spec = RPNSpec(sizes=(10, 12), ratios=(1.0,), nms_thresh=0.7, nms_plus_one=plus_one, pre_nms_topk=2)
        rpn = rpn_with(spec, logits, torch.zeros(1, 8, 2, 2))
        ((boxes, _),) = rpn(torch.zeros(1, 4, 2, 2), [(32, 32)])
        assert len(boxes) == n


def test_head_and_proposal_shapes_of_a_tiny_rpn():
    spec = RPNSpec(sizes=(32, 64), ratios=(0.5, 1.0, 2.0), hidden=6, post_nms_topk=20)
    rpn = RPN(4, spec)
    assert rpn.rpn_head.conv.out_channels == 6
    x = torch.randn(2, 4, 5, 7)
    logits, deltas = rpn.rpn_head(x)
    assert logits.shape == (2, 6, 5, 7) and deltas.shape == (2, 24, 5, 7)
    out = rpn(x, [(80, 112), (70, 100)])
    assert len(out) == 2
    for boxes, scores in out:
        assert boxes.shape[1] == 4 and scores.shape == (len(boxes),) and 0 < len(boxes) <= 20
    assert RPN(4, RPNSpec()).rpn_head.conv.out_channels == 4  # hidden -1: the input's width
