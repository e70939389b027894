"""Two-stage (Faster R-CNN) detectors assembled from the components, with detectron2's module names.

`C4Detector` (bottom-up attention, VinVL) and `FPNDetector` (VMB / vqa-maskrcnn-benchmark) share one contract:
- `features(images, canvas_sizes)`: (N, 3, H, W) normalised, zero-padded input -> feature map(s); each image's
  features as if it ran alone on its own canvas (activations outside it are zeroed, see `resnet`).
- `proposals(feat, image_sizes, canvas_sizes)`: per image (boxes (P, 4), objectness (P,)) in input pixels,
  clipped to `image_sizes`, from the anchors inside that image's own canvas.
- `regions(feat, boxes_per_image, canvas_sizes)`: RoI features (sum P, C), rows in image order (C4: mean-pooled res5; FPN:
  fc6), and the predictor's input (C4: the same; FPN: fc7).
- `predict(head_input)`: class logits (R, K+1), deltas, attribute logits or None.
- `decode(deltas, boxes)`: class-specific regressed boxes (R, K, 4), foreground classes only.
- `split_background(probs)`: the K foreground columns of (R, K+1) probabilities (background last in detectron2,
  first in maskrcnn-benchmark: `DetectorSpec.legacy`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from visfeat.detection.boxes import BoxTransform
from visfeat.detection.heads import LevelPooler, MLPHead, Pooler, Predictor, Res5ROIHeads
from visfeat.detection.resnet import ResNet, ResNetSpec, Sizes, mask_outside, pool_out
from visfeat.detection.rpn import RPN, RPNSpec


@dataclass(frozen=True)
class DetectorSpec:
    resnet: ResNetSpec = field(default_factory=ResNetSpec)
    rpn: RPNSpec = field(default_factory=RPNSpec)
    pooler: str = "ROIPool"
    pooler_resolution: int = 14
    sampling_ratio: int = 0
    num_classes: int = 1600
    num_attrs: int = 0
    class_agnostic: bool = False
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # ROI_BOX_HEAD.BBOX_REG_WEIGHTS
    bg_last: bool = True  # detectron2: background is the last logit; maskrcnn-benchmark: the first
    legacy: bool = False  # maskrcnn-benchmark: background first, K+1 box classes, "+1" boxes
    attr_head: str = "butd"  # "butd": attributes in the box predictor; "vinvl": a second res5 pass (AttrRCNN)
    attr_cls_dim: int = 256  # VinVL ROI_ATTRIBUTE_HEAD.CLS_EMD_DIM (read from the checkpoint)
    attr_dim: int = 512  # VinVL ROI_ATTRIBUTE_HEAD.ATTR_EMD_DIM (read from the checkpoint)
    fpn: bool = False  # FPN backbone + MLP box head (VMB); False: C4 with a res5 head
    fpn_channels: int = 256  # FPN width (MODEL.BACKBONE.OUT_CHANNELS; read from the checkpoint)
    mlp_dim: int = 1024  # ROI_BOX_HEAD.MLP_HEAD_DIM (FPN box head)
    pooler_scales: tuple[float, ...] = (0.25, 0.125, 0.0625, 0.03125)  # ROI_BOX_HEAD.POOLER_SCALES (FPN)


class AttributeHead(nn.Module):
    """scene_graph_benchmark attribute_head (AttributeRCNNPredictor): the res5 feature of each final box,
    concatenated with an embedding of its predicted label (1-based, background row 0), fc_attr + ReLU,
    attr_score (A+1, index 0 = no attribute). The res5 head is the box head's (the checkpoint repeats it)."""

    def __init__(self, cin: int, num_classes: int, num_attrs: int, cls_dim: int, attr_dim: int):
        super().__init__()
        self.cls_embedding = nn.Embedding(num_classes + 1, cls_dim)
        self.fc_attr = nn.Linear(cin + cls_dim, attr_dim)
        self.attr_score = nn.Linear(attr_dim, num_attrs + 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = self.cls_embedding(labels).to(x.dtype)
        return self.attr_score(F.relu(self.fc_attr(torch.cat([x, emb], 1))))


def _rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([torch.cat([torch.full((len(b), 1), float(i), device=b.device), b.float()], 1)
                      for i, b in enumerate(boxes)])


class _Common(nn.Module):
    spec: "DetectorSpec"

    def decode(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        out = self.box_transform.apply(deltas.float(), boxes.float()).view(len(boxes), -1, 4)
        if self.spec.legacy and out.shape[1] > 1:
            out = out[:, 1:]  # maskrcnn-benchmark regresses the background class too: drop it
        return out

    def split_background(self, probs: torch.Tensor) -> torch.Tensor:
        """Foreground columns of (R, K+1) probabilities, in class-id order."""
        return probs[:, :-1] if self.spec.bg_last and not self.spec.legacy else probs[:, 1:]

    def predict(self, head_input: torch.Tensor):
        """In float32 even under autocast: its scores and deltas decide the box selections (bf16 logits flip
        near-tied classes and NMS orders), and it is a small part of the forward."""
        with torch.autocast(head_input.device.type, enabled=False):
            return self.roi_heads.box_predictor(head_input.float())


class C4Detector(_Common):
    def __init__(self, spec: DetectorSpec):
        super().__init__()
        self.spec = spec
        self.backbone = ResNet(spec.resnet, last=4)
        self.proposal_generator = RPN(self.backbone.out_channels, spec.rpn)
        pooler = Pooler(spec.pooler, spec.pooler_resolution, 1.0 / spec.rpn.stride, spec.sampling_ratio)
        butd_attrs = spec.num_attrs if spec.attr_head == "butd" else 0
        predictor = Predictor(spec.resnet.stage(5)[2], spec.num_classes, spec.class_agnostic, butd_attrs,
                              box_classes=spec.num_classes + 1 if spec.legacy and not spec.class_agnostic else None)
        self.roi_heads = Res5ROIHeads(spec.resnet, pooler, predictor)
        if spec.num_attrs and spec.attr_head == "vinvl":
            self.attribute = AttributeHead(self.out_channels, spec.num_classes, spec.num_attrs,
                                           spec.attr_cls_dim, spec.attr_dim)
        self.box_transform = BoxTransform(spec.box_weights, offset=1 if spec.legacy else 0)

    @property
    def out_channels(self) -> int:
        return self.spec.resnet.stage(5)[2]

    def features(self, images: torch.Tensor, canvas_sizes: Sizes | None = None) -> torch.Tensor:
        return self.backbone(images, canvas_sizes)

    def proposals(self, feat: torch.Tensor, image_sizes: Sizes, canvas_sizes: Sizes | None = None):
        canvas = image_sizes if canvas_sizes is None else canvas_sizes
        return self.proposal_generator(feat, image_sizes, self.backbone.out_sizes(canvas))

    def regions(self, feat: torch.Tensor, boxes: list[torch.Tensor], canvas_sizes: Sizes | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.roi_heads(feat, _rois(boxes), self._extents(canvas_sizes))
        return x, x

    def attributes(self, feat: torch.Tensor, boxes: list[torch.Tensor], labels: torch.Tensor,
                   canvas_sizes: Sizes | None = None) -> torch.Tensor:
        """VinVL: attribute logits of `boxes` (res5 run again on them) given their 1-based labels."""
        return self.attribute(self.roi_heads(feat, _rois(boxes), self._extents(canvas_sizes)), labels)

    def _extents(self, canvas_sizes: Sizes | None) -> Sizes | None:
        return None if canvas_sizes is None else self.backbone.out_sizes(canvas_sizes)


class FPN(nn.Module):
    """maskrcnn-benchmark modeling/backbone/fpn.py as vqa-maskrcnn-benchmark has it: lateral 1x1 convs
    (fpn_inner1..4), top-down nearest x2 upsampling by scale factor (Caffe style: inputs padded to 32),
    3x3 output convs (fpn_layer1..4), P6 = max_pool2d(P5, 1, stride 2) (LastLevelMaxPool). Masks keep each
    image's extent as if it ran alone."""

    def __init__(self, in_channels: list[int], out: int):
        super().__init__()
        for i, c in enumerate(in_channels, 1):
            self.add_module(f"fpn_inner{i}", nn.Conv2d(c, out, 1))
            self.add_module(f"fpn_layer{i}", nn.Conv2d(out, out, 3, 1, 1))
        self.n = len(in_channels)

    def forward(self, stages: list[tuple[torch.Tensor, Sizes | None]]) -> tuple[list[torch.Tensor], list]:
        n = self.n
        x, sizes = stages[-1]
        last = mask_outside(getattr(self, f"fpn_inner{n}")(x), sizes)
        results = [mask_outside(getattr(self, f"fpn_layer{n}")(last), sizes)]
        out_sizes = [sizes]
        for i in range(n - 1, 0, -1):
            x, sizes = stages[i - 1]
            lateral = getattr(self, f"fpn_inner{i}")(x)
            last = mask_outside(lateral + F.interpolate(last, scale_factor=2, mode="nearest"), sizes)
            results.insert(0, mask_outside(getattr(self, f"fpn_layer{i}")(last), sizes))
            out_sizes.insert(0, sizes)
        results.append(F.max_pool2d(results[-1], 1, 2, 0))
        last_sizes = out_sizes[-1]
        out_sizes.append(None if last_sizes is None else
                         [(pool_out(h, 1, 2, 0, False), pool_out(w, 1, 2, 0, False)) for h, w in last_sizes])
        return results, out_sizes


class _FPNBackbone(nn.Module):
    def __init__(self, spec: DetectorSpec):
        super().__init__()
        self.body = ResNet(spec.resnet, last=5)
        self.fpn = FPN([spec.resnet.stage(i)[2] for i in range(2, 6)], spec.fpn_channels)

    def forward(self, images: torch.Tensor, canvas_sizes: Sizes | None):
        return self.fpn(self.body.forward_stages(images, canvas_sizes))


class _FPNHeads(nn.Module):
    def __init__(self, spec: DetectorSpec):
        super().__init__()
        pooler = LevelPooler(spec.pooler_resolution, spec.pooler_scales, spec.sampling_ratio)
        self.box_head = MLPHead(pooler, spec.fpn_channels, spec.mlp_dim)
        self.box_predictor = Predictor(spec.mlp_dim, spec.num_classes, spec.class_agnostic, 0,
                                       box_classes=spec.num_classes + 1)


class FPNDetector(_Common):
    """vqa-maskrcnn-benchmark's GeneralizedRCNN with an FPN backbone and the MLP box head (VMB)."""

    def __init__(self, spec: DetectorSpec):
        super().__init__()
        self.spec = spec
        self.backbone = _FPNBackbone(spec)
        self.proposal_generator = RPN(spec.fpn_channels, spec.rpn)
        self.roi_heads = _FPNHeads(spec)
        self.box_transform = BoxTransform(spec.box_weights, offset=1)

    @property
    def out_channels(self) -> int:
        return self.spec.mlp_dim

    def features(self, images: torch.Tensor, canvas_sizes: Sizes | None = None) -> list[torch.Tensor]:
        return self.backbone(images, canvas_sizes)[0]

    def proposals(self, feat: list[torch.Tensor], image_sizes: Sizes, canvas_sizes: Sizes | None = None):
        canvas = image_sizes if canvas_sizes is None else canvas_sizes
        levels = self.backbone.body.stage_sizes(canvas)
        levels.append([(pool_out(h, 1, 2, 0, False), pool_out(w, 1, 2, 0, False)) for h, w in levels[-1]])
        return self.proposal_generator(feat, image_sizes, levels)

    def regions(self, feat: list[torch.Tensor], boxes: list[torch.Tensor], canvas_sizes: Sizes | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        extents = None if canvas_sizes is None else self.backbone.body.stage_sizes(canvas_sizes)
        return self.roi_heads.box_head(feat[:4], _rois(boxes), extents)
