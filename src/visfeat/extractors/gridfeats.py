"""grid-feats-vqa grid features: the res5 map of a detector's backbone, unpooled, at extraction dilation 1.

As facebookresearch/grid-feats-vqa extract_grid_feature.py does it: the detector (trained with RES5_DILATION 2)
is built with RES5_DILATION forced to 1, each image goes alone through `model.backbone` (detectron2 ResNet to
res5, torchvision-style stem max-pool) and `roi_heads.get_conv5_features` returns the res5 map, so a 600x902
input gives a 19x29 map. Input: detectron2 ResizeShortestEdge 600/1000 (PIL bilinear on uint8), BGR, the
config's mean and std, no padding.

Fields: `grid` rows (H*W, C) row-major per image, ragged, with `grid_hw` (H, W); or, with option `pool: [h, w]`,
a fixed (h, w, C) grid from adaptive average pooling (not in the original: for models that want a fixed grid).
A batch runs images of equal input size together and the others alone, so no image sees padding; on the CPU
every image runs alone (a batch of equal sizes costs about twice as much per image there as batch 1).
The checkpoints are detectron2 `.pth` files ({"model": state dict}); only `backbone.*` is read.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from visfeat.detection.checkpoint import read_state_dict
from visfeat.detection.preprocess import SIZES, DetectorPreprocessor
from visfeat.detection.resnet import BLOCKS, ResNet, ResNetSpec
from visfeat.extractors.base import Extractor, FieldSpec
from visfeat.detection.statedict import load_strict


def backbone_state(state: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    out = {k[len("backbone."):]: v for k, v in state.items()
           if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    if not out:
        raise KeyError(f"{path}: no backbone.* tensors: not a detectron2 detector checkpoint")
    return out


def infer_resnet(state: dict[str, torch.Tensor], base: ResNetSpec, path) -> ResNetSpec:
    blocks = tuple(
        1 + max((int(m.group(1)) for k in state if (m := re.match(rf"res{i}\.(\d+)\.", k))), default=-1)
        for i in range(2, 6))
    depth = next((d for d, b in BLOCKS.items() if b == blocks), None)
    if depth is None:
        raise KeyError(f"{path}: backbone has {blocks} blocks in res2..res5: not a ResNet-50/101/152 to res5")
    bottleneck, per_group = state["res2.0.conv2.weight"].shape[:2]
    return dataclasses.replace(base, depth=depth, stem_out=state["stem.conv1.weight"].shape[0],
                               res2_out=state["res2.0.conv3.weight"].shape[0], num_groups=bottleneck // per_group,
                               width_per_group=per_group)


class GridFeatsExtractor(Extractor):
    group_by_aspect = True  # equal-size images share a forward
    channels_last = "amp"

    def __init__(self, preset: str, options: dict[str, Any], weights_sha256: str, device, amp: bool,
                 backbone: ResNet):
        super().__init__(preset, options, weights_sha256, device, amp)
        self.backbone = self.placed(backbone)
        if options["size"] not in SIZES:
            raise ValueError(f"{preset}: size {options['size']!r} unknown; named sizes: {', '.join(SIZES)}")
        self.pool = tuple(options["pool"]) if options.get("pool") else None

    def fields(self) -> list[FieldSpec]:
        c = self.backbone.out_channels
        if self.pool:
            return [FieldSpec("grid", (*self.pool, c))]
        return [FieldSpec("grid", (c,), ragged="cells"), FieldSpec("grid_hw", (2,), "int32")]

    def preprocessor(self) -> DetectorPreprocessor:
        o = self.config
        short, max_size = SIZES[o["size"]]
        return DetectorPreprocessor(short, max_size, tuple(o["pixel_mean"]), tuple(o["pixel_std"]),
                                    o["input_format"] == "BGR")

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"images": [s["image"] for s in samples]}  # sizes differ: grouped in forward, never padded

    @torch.inference_mode()
    def forward(self, batch: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        images = batch["images"]
        groups: dict[tuple[int, int] | int, list[int]] = {}
        for i, t in enumerate(images):
            groups.setdefault(i if self.device.type == "cpu" else tuple(t.shape[1:]), []).append(i)
        maps: list[torch.Tensor | None] = [None] * len(images)
        for idx in groups.values():
            x = self.on_device(torch.stack([images[i] for i in idx]))
            with self.autocast():
                y = self.backbone(x)
            if self.pool:
                y = F.adaptive_avg_pool2d(y.float(), self.pool)
            for k, i in enumerate(idx):
                maps[i] = y[k].float()
        outs = []
        for m in maps:
            g = m.permute(1, 2, 0).cpu().numpy()  # (H, W, C)
            if self.pool:
                outs.append({"grid": g})
            else:
                outs.append({"grid": g.reshape(-1, g.shape[-1]), "grid_hw": np.asarray(g.shape[:2], np.int32)})
        return outs


def build(preset, weights: str | None, device, amp: bool, options: dict[str, Any]) -> GridFeatsExtractor:
    from visfeat.extractors.weights import resolve_weights

    path, sha = resolve_weights(preset, weights)
    state = backbone_state(read_state_dict(path), path)
    o = options
    base = ResNetSpec(stride_in_1x1=o["stride_in_1x1"], caffe_maxpool=False, res5_dilation=o["res5_dilation"])
    with torch.device("meta"):  # no random init to overwrite: every tensor comes from the checkpoint (strict)
        model = ResNet(infer_resnet(state, base, path), last=5)
    model = model.to_empty(device="cpu")
    load_strict(model, state, path, "the ResNet backbone")
    return GridFeatsExtractor(preset.name, options, sha, device, amp, model)
