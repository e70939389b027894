"""A two-stage (Faster R-CNN) detector assembled from the components, with detectron2's module names.

Contract of `C4Detector`:
- `features(images, image_sizes)`: (N, 3, H, W) normalised, zero-padded input -> res4 map (N, C4, H/16, W/16);
  each image's features as if it ran alone (activations outside its extent are zeroed, see `resnet`).
- `proposals(feat, image_sizes)`: per image (boxes (P, 4), objectness (P,)) in input pixels, from the anchors
  inside that image's own feature extent.
- `regions(feat, boxes_per_image)`: RoI features (sum P, C5), rows in image order.
- `predict(regions)`: class logits (R, K+1), deltas, attribute logits or None (background index: `bg_last`).
- `decode(deltas, boxes)`: class-specific regressed boxes (R, K', 4).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .boxes import BoxTransform
from .heads import Pooler, Predictor, Res5ROIHeads
from .resnet import ResNet, ResNetSpec
from .rpn import RPN, RPNSpec


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


class C4Detector(nn.Module):
    def __init__(self, spec: DetectorSpec):
        super().__init__()
        self.spec = spec
        self.backbone = ResNet(spec.resnet, last=4)
        self.proposal_generator = RPN(self.backbone.out_channels, spec.rpn)
        pooler = Pooler(spec.pooler, spec.pooler_resolution, 1.0 / spec.rpn.stride, spec.sampling_ratio)
        predictor = Predictor(spec.resnet.stage(5)[2], spec.num_classes, spec.class_agnostic, spec.num_attrs)
        self.roi_heads = Res5ROIHeads(spec.resnet, pooler, predictor)
        self.box_transform = BoxTransform(spec.box_weights)

    @property
    def out_channels(self) -> int:
        return self.spec.resnet.stage(5)[2]

    def features(self, images: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None) -> torch.Tensor:
        return self.backbone(images, image_sizes)

    def proposals(self, feat: torch.Tensor, image_sizes: list[tuple[int, int]]):
        return self.proposal_generator(feat, image_sizes, self.backbone.out_sizes(image_sizes))

    def regions(self, feat: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), device=b.device), b.float()], 1)
                          for i, b in enumerate(boxes)])
        return self.roi_heads(feat, rois)

    def predict(self, regions: torch.Tensor):
        return self.roi_heads.box_predictor(regions)

    def decode(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.box_transform.apply(deltas.float(), boxes.float()).view(len(boxes), -1, 4)

    def split_background(self, probs: torch.Tensor) -> torch.Tensor:
        """Foreground columns of (R, K+1) probabilities, in class-id order."""
        return probs[:, :-1] if self.spec.bg_last else probs[:, 1:]
