"""Contracts of `detection.heads`: pooler kinds and output sizes, FPN level assignment with "+1" areas, the res5 and
MLP box heads and the predictor (with py-bottom-up-attention's attribute branch).

Sources: detectron2/modeling/poolers.py (ROIPool, ROIAlign, ROIAlignV2), maskrcnn_benchmark/modeling/poolers.py
(LevelMapper), maskrcnn_benchmark/modeling/roi_heads/box_head/roi_box_feature_extractors.py (FPN2MLPFeatureExtractor),
py-bottom-up-attention detectron2/modeling/roi_heads/fast_rcnn.py (attributes).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torchvision.ops import roi_align, roi_pool

from visfeat.detection.heads import LevelPooler, MLPHead, Pooler, Predictor, Res5ROIHeads
from visfeat.detection.resnet import ResNetSpec

TINY = ResNetSpec(depth=50, stem_out=8, res2_out=16, width_per_group=2, num_groups=2)
SCALES = (0.25, 0.125, 0.0625, 0.03125)


def rois(*boxes, image: int = 0) -> torch.Tensor:
    return torch.tensor([[image, *b] for b in boxes], dtype=torch.float32)


@pytest.mark.parametrize("kind", ["ROIPool", "ROIAlign", "ROIAlignV2"])
@pytest.mark.parametrize("resolution", [7, 14])
def test_pooler_output_size(kind, resolution):
    x = torch.randn(2, 5, 20, 30)
    out = Pooler(kind, resolution, 1 / 16)(x, rois((0, 0, 100, 80), (16, 16, 200, 300)))
    assert out.shape == (2, 5, resolution, resolution)


def test_pooler_kinds_are_torchvisions_ops():
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(1, 3, 20, 30, generator=g), rois((3.3, 5.1, 90.7, 120.2), (10, 0, 40, 30))
    torch.testing.assert_close(Pooler("ROIPool", 14, 1 / 16)(x, r), roi_pool(x, r, 14, 1 / 16))
    torch.testing.assert_close(Pooler("ROIAlign", 14, 1 / 16, 2)(x, r), roi_align(x, r, 14, 1 / 16, 2, aligned=False))
    torch.testing.assert_close(Pooler("ROIAlignV2", 7, 1 / 16)(x, r), roi_align(x, r, 7, 1 / 16, 0, aligned=True))
    assert not torch.allclose(Pooler("ROIAlign", 7, 1 / 16)(x, r), Pooler("ROIAlignV2", 7, 1 / 16)(x, r))


def test_unknown_pooler_is_refused():
    with pytest.raises(ValueError, match="unknown pooler"):
        Pooler("ROIAlignV3", 7, 1 / 16)


def test_pooler_reads_each_image_from_its_own_extent():
    """ROIAlign clamps samples at the map's last row: on a padded map a RoI at the edge would read the padding."""
    small = torch.randn(1, 3, 6, 8)
    batch = torch.full((2, 3, 10, 12), 100.0)
    batch[0, :, :6, :8] = small[0]
    r = torch.cat([rois((40, 30, 127, 95), image=0), rois((0, 0, 50, 50), image=1)])
    pooler = Pooler("ROIAlign", 7, 1 / 16, 2)
    out = pooler(batch, r, [(6, 8), (10, 12)])
    torch.testing.assert_close(out[:1], pooler(small, rois((40, 30, 127, 95))))
    torch.testing.assert_close(out[1:], pooler(batch[1:], rois((0, 0, 50, 50))))
    assert not torch.allclose(pooler(batch, r)[:1], out[:1])


@pytest.mark.parametrize("kind", ["ROIPool", "ROIAlign", "ROIAlignV2"])
def test_pooler_equals_pooling_each_crop(kind):
    """RoIs inside their image's extent pool from the whole map in one call, the rest per crop: bit for bit
    what pooling every image's RoIs from its own crop gives (padding filled with noise, so a leak shows)."""
    g = torch.Generator().manual_seed(0)
    extents = [(50, 60), (37, 41), (20, 55)]
    x = torch.randn(3, 4, 50, 60, generator=g)
    boxes = []
    for i, (h, w) in enumerate(extents):
        size = torch.tensor([w * 16.0, h * 16.0])
        xy = torch.rand(40, 2, generator=g) * size
        b = torch.cat([xy, torch.minimum(xy + torch.rand(40, 2, generator=g) * size / 2, size - 1)], 1)
        boxes.append(torch.cat([torch.full((40, 1), float(i)), b], 1))
    r = torch.cat(boxes)[torch.randperm(120, generator=g)]
    pooler = Pooler(kind, 7, 1 / 16)
    out = pooler(x, r, extents)
    for i, (h, w) in enumerate(extents):
        mine = r[:, 0] == i
        crop = r[mine].clone()
        crop[:, 0] = 0
        assert torch.equal(out[mine], pooler(x[i:i + 1, :, :h, :w].contiguous(), crop))


def test_fpn_level_uses_plus_one_areas():
    """LevelMapper: floor(4 + log2(sqrt((w + 1) * (h + 1)) / 224 + 1e-6)), clamped to levels 2..5."""
    p = LevelPooler(7, SCALES, 2)
    assert (p.k_min, p.k_max) == (2, 5)
    boxes = torch.tensor([
        [0.0, 0, 111, 111],  # "+1" side 112 = 224 / 2: level 3 (plain widths would give 2)
        [0, 0, 110, 110],  # side 111: level 2
        [0, 0, 223, 223],  # side 224: level 4
        [0, 0, 100, 100],  # X-LXMERT's 100 x 100 grid cell: level 2
        [0, 0, 148, 100],  # 148 x 100: level 3
        [0, 0, 2, 2],  # tiny: clamped to level 2
        [0, 0, 2000, 2000],  # huge: clamped to level 5
    ])
    assert (p.levels(boxes) + p.k_min).tolist() == [3, 2, 4, 2, 3, 2, 5]


def test_level_pooler_pools_each_roi_from_its_level():
    maps = [torch.full((1, 2, 64 // 2 ** i, 64 // 2 ** i), float(i)) for i in range(4)]
    r = rois((0, 0, 111, 111), (0, 0, 10, 10), (0, 0, 223, 223), (0, 0, 1000, 1000))
    out = LevelPooler(7, SCALES, 2)(maps, r)
    assert out.shape == (4, 2, 7, 7)
    assert out.amax(dim=(1, 2, 3)).tolist() == [1, 0, 2, 3]  # level index into `maps`, in RoI order


def test_mlp_head_returns_fc6_and_fc7():
    head = MLPHead(LevelPooler(7, SCALES, 2), 4, 32)
    assert head.fc6.in_features == 4 * 7 * 7
    maps = [torch.randn(1, 4, 64 // 2 ** i, 64 // 2 ** i) for i in range(4)]
    fc6, fc7 = head(maps, rois((0, 0, 30, 30), (5, 5, 200, 150), (0, 0, 255, 255)))
    assert fc6.shape == fc7.shape == (3, 32)
    assert fc6.min() >= 0 and fc7.min() >= 0  # both after ReLU (VMB's feature is relu(fc6))
    torch.testing.assert_close(fc7, torch.relu(head.fc7(fc6)))


@pytest.mark.parametrize("dilation, pooled", [(1, 14), (2, 14), (1, 7)])
def test_res5_head_mean_pools_res5(dilation, pooled):
    spec = replace(TINY, res5_dilation=dilation)
    heads = Res5ROIHeads(spec, Pooler("ROIPool", pooled, 1 / 16), Predictor(128, 5)).eval()
    x = torch.randn(1, 64, 20, 20)
    r = rois((0, 0, 100, 100), (30, 50, 300, 310))
    with torch.no_grad():
        out = heads(x, r)
        res5 = heads.res5(heads.pooler(x, r))
    assert out.shape == (2, 128)
    side = pooled if dilation == 2 else (pooled + 1) // 2  # stride 2, pad 1: ceil(n / 2)
    assert res5.shape[2:] == (side, side)
    torch.testing.assert_close(out, res5.mean(dim=(2, 3)))


@pytest.mark.parametrize("agnostic, box_classes, deltas", [(False, None, 40), (True, None, 4), (False, 11, 44)])
def test_predictor_shapes(agnostic, box_classes, deltas):
    scores, d, attrs = Predictor(16, 10, class_agnostic=agnostic, box_classes=box_classes)(torch.randn(3, 16))
    assert scores.shape == (3, 11) and d.shape == (3, deltas) and attrs is None


def test_attribute_branch_embeds_the_argmax_over_all_logits_background_included():
    """py-bottom-up-attention fast_rcnn.py: the class embedded is `scores.max(-1)` over K + 1 columns."""
    p = Predictor(16, 10, num_attrs=6)
    assert (p.cls_embedding.num_embeddings, p.cls_embedding.embedding_dim) == (11, 2)  # K + 1, C / 8
    assert (p.fc_attr.in_features, p.fc_attr.out_features, p.attr_score.out_features) == (18, 4, 7)  # C + C/8, C/4
    with torch.no_grad():
        p.cls_score.bias.zero_()
        p.cls_score.bias[10] = 100.0  # background (last column) wins every row
        x = torch.randn(4, 16)
        scores, _, attrs = p(x)
        emb = p.cls_embedding.weight[10].expand(4, -1)
        expected = p.attr_score(torch.relu(p.fc_attr(torch.cat([x, emb], 1))))
    assert scores.argmax(-1).tolist() == [10] * 4
    torch.testing.assert_close(attrs, expected)
