"""A detector from its preset options and a checkpoint: the architecture the options name, the sizes the
file holds (`checkpoint.infer_spec`), the weights loaded strictly in either layout (detectron2 or
maskrcnn-benchmark). Option `config_yaml` reads the checkpoint's maskrcnn-benchmark yaml first.
"""
from __future__ import annotations

from typing import Any

import torch

from visfeat.detection.checkpoint import (
    from_maskrcnn_benchmark,
    infer_spec,
    is_maskrcnn_benchmark,
    load_into,
    read_state_dict,
)
from visfeat.detection.model import C4Detector, DetectorSpec, FPNDetector
from visfeat.detection.resnet import ResNetSpec
from visfeat.detection.rpn import RPNSpec


def detector_spec(options: dict[str, Any]) -> DetectorSpec:
    """The architecture the preset names (sizes are then read from the checkpoint by `infer_spec`)."""
    o = options
    legacy = bool(o.get("legacy", False))
    fpn = bool(o.get("fpn", False))
    return DetectorSpec(
        resnet=ResNetSpec(depth=o["depth"], stride_in_1x1=o["stride_in_1x1"], caffe_maxpool=o["caffe_maxpool"],
                          res5_dilation=o["res5_dilation"], num_groups=o.get("num_groups", 1),
                          width_per_group=o.get("width_per_group", 64), bn_eps=None if legacy else 1e-5),
        rpn=RPNSpec(sizes=tuple(o["anchor_sizes"]), ratios=tuple(o["anchor_ratios"]),
                    pre_nms_topk=o["rpn_pre_nms_topk"], post_nms_topk=o["rpn_post_nms_topk"],
                    nms_thresh=o["rpn_nms_thresh"], legacy=legacy, nms_plus_one=bool(o.get("nms_plus_one", False)),
                    fpn_strides=tuple(o.get("anchor_strides", ())) if fpn else (),
                    fpn_post_nms_topk=o.get("rpn_fpn_post_nms_topk", 1000)),
        pooler=o["pooler"], pooler_resolution=o["pooler_resolution"], sampling_ratio=o.get("sampling_ratio", 0),
        num_classes=o["num_classes"], num_attrs=o.get("num_attrs", 0), bg_last=o.get("bg_last", True),
        legacy=legacy, attr_head=o.get("attr_head", "butd"), fpn=fpn)


def with_config_yaml(options: dict[str, Any]) -> dict[str, Any]:
    """Option `config_yaml`: the checkpoint's maskrcnn-benchmark yaml, read for the values that matter."""
    if not options.get("config_yaml"):
        return options
    from visfeat.detection.mrcnn_yaml import options_from_yaml

    return {**options, **options_from_yaml(options["config_yaml"], options)}


def load_detector(state: dict[str, torch.Tensor], options: dict[str, Any], path) -> C4Detector | FPNDetector:
    """Model of the preset's architecture with the file's sizes, weights loaded strictly (either layout)."""
    base = detector_spec(options)
    anchors: list[torch.Tensor] = []
    if is_maskrcnn_benchmark(state):
        state, anchors = from_maskrcnn_benchmark(state, fpn=base.fpn, path=path)
    spec = infer_spec(state, base)
    model = FPNDetector(spec) if spec.fpn else C4Detector(spec)
    load_into(model, state, path, anchors)
    return model


def detector_from_file(path, options: dict[str, Any]) -> tuple[C4Detector | FPNDetector, dict[str, Any]]:
    """The model in `path` with the preset `options` (completed from `config_yaml`), and those options."""
    options = with_config_yaml(options)
    return load_detector(read_state_dict(path), options, path), options
