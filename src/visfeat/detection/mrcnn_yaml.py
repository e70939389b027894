"""Read a maskrcnn-benchmark yaml config (the `.yaml` that ships with a VinVL / VMB checkpoint) for the values
that change the features, as visfeat preset options.

Only keys present in the file are taken (the preset already holds maskrcnn-benchmark's defaults), and only
those the original extraction script reads from the config: MMF's extract_features_vmb.py and X-LXMERT's
scripts hard-code the input size, mean and box selection, so for `caffe_float` presets the INPUT and ROI_HEADS
test values are ignored; VinVL's (scene_graph_benchmark) take them from the config. Unknown architectures
are an error naming the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from visfeat.detection.preprocess import SIZES

_BODIES = {"R-50-C4": (50, False), "R-101-C4": (101, False), "R-152-C4": (152, False),
           "R-50-FPN": (50, True), "R-101-FPN": (101, True), "R-152-FPN": (152, True)}


def _get(cfg: dict, dotted: str):
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def options_from_yaml(path: str | Path, preset_options: dict[str, Any]) -> dict[str, Any]:
    """Option overrides implied by the yaml at `path` for a preset with `preset_options`."""
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    out: dict[str, Any] = {}

    def take(key: str, option: str, convert=lambda v: v) -> None:
        v = _get(cfg, key)
        if v is not None:
            out[option] = convert(v)

    body = _get(cfg, "MODEL.BACKBONE.CONV_BODY")
    if body is not None:
        if body not in _BODIES:
            raise ValueError(f"{path}: MODEL.BACKBONE.CONV_BODY {body!r} is not one visfeat builds "
                             f"({', '.join(_BODIES)})")
        depth, fpn = _BODIES[body]
        if fpn != bool(preset_options.get("fpn", False)):
            raise ValueError(f"{path}: MODEL.BACKBONE.CONV_BODY {body!r} does not fit this preset "
                             f"({'FPN' if preset_options.get('fpn') else 'C4'})")
        out["depth"] = depth
    take("MODEL.RESNETS.NUM_GROUPS", "num_groups", int)
    take("MODEL.RESNETS.WIDTH_PER_GROUP", "width_per_group", int)
    take("MODEL.RESNETS.STRIDE_IN_1X1", "stride_in_1x1", bool)
    take("MODEL.RESNETS.RES5_DILATION", "res5_dilation", int)
    take("MODEL.RPN.ANCHOR_SIZES", "anchor_sizes", lambda v: [float(x) for x in _seq(v)])
    take("MODEL.RPN.ASPECT_RATIOS", "anchor_ratios", lambda v: [float(x) for x in _seq(v)])
    if preset_options.get("fpn"):
        take("MODEL.RPN.ANCHOR_STRIDE", "anchor_strides", lambda v: [int(x) for x in _seq(v)])
        take("MODEL.RPN.FPN_POST_NMS_TOP_N_TEST", "rpn_fpn_post_nms_topk", int)
    take("MODEL.RPN.PRE_NMS_TOP_N_TEST", "rpn_pre_nms_topk", int)
    take("MODEL.RPN.POST_NMS_TOP_N_TEST", "rpn_post_nms_topk", int)
    take("MODEL.RPN.NMS_THRESH", "rpn_nms_thresh", float)
    take("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "pooler_resolution", int)
    take("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "sampling_ratio", int)
    take("MODEL.ROI_BOX_HEAD.NUM_CLASSES", "num_classes", lambda v: int(v) - 1)  # the yaml counts background
    if preset_options.get("attr_head") == "vinvl":
        take("MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES", "num_attrs", lambda v: int(v) - 1)
        take("MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD", "attr_thresh", float)
        take("MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_OBJ", "attr_per_box", int)
    if preset_options.get("preprocess") == "maskrcnn":  # the script builds its transforms from the config
        lo, hi = _get(cfg, "INPUT.MIN_SIZE_TEST"), _get(cfg, "INPUT.MAX_SIZE_TEST")
        if lo is not None or hi is not None:
            size = f"{lo if lo is not None else SIZES[preset_options['size']][0]}/" \
                   f"{hi if hi is not None else SIZES[preset_options['size']][1]}"
            if size not in SIZES:
                raise ValueError(f"{path}: input size {size} is not a named size ({', '.join(SIZES)})")
            out["size"] = size
        take("INPUT.PIXEL_MEAN", "pixel_mean", lambda v: [float(x) for x in v])
        take("INPUT.PIXEL_STD", "pixel_std", lambda v: [float(x) for x in v])
    if preset_options.get("selection") == "nms_filter":
        take("MODEL.ROI_HEADS.SCORE_THRESH", "conf_thresh", float)
        take("MODEL.ROI_HEADS.DETECTIONS_PER_IMG", "max_boxes", int)
        take("MODEL.ROI_HEADS.MIN_DETECTIONS_PER_IMG", "min_boxes", int)
        take("TEST.IGNORE_BOX_REGRESSION", "ignore_box_regression", bool)
    return out


def _seq(v) -> list:
    """yacs writes tuples as "(32, 64)" strings in some dumps; accept lists, tuples and those strings."""
    if isinstance(v, str):
        v = yaml.safe_load("[" + v.strip("()[] ") + "]")
    return list(v) if isinstance(v, (list, tuple)) else [v]
