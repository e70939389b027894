"""Read the official detector weight files into our modules (whose names are detectron2's).

- detectron2 pickles (py-bottom-up-attention's faster_rcnn_from_caffe*.pkl, grid-feats-vqa): a pickled dict
  {"model": {name: ndarray}, ...} with detectron2 module names.
- torch files (`.pth`, `.bin`): a state dict, or {"model": state dict}. `unc-nlp/frcnn-vg-finetuned`'s
  pytorch_model.bin (HF transformers examples/research_projects/lxmert/modeling_frcnn.py) uses the same names as
  the fork's pickle, plus `num_batches_tracked` and the cell anchors as a parameter (checked, then dropped).

- maskrcnn-benchmark `.pth` files (VinVL's scene_graph_benchmark, vqa-maskrcnn-benchmark's VMB models):
  {"model": state dict}, keys with or without DDP's `module.` prefix, its own names (`backbone.body.layer1.0.bn1`,
  `rpn.head.cls_logits`, `roi_heads.box.feature_extractor.fc6`, ...); `from_maskrcnn_benchmark` renames them to
  ours. Cell anchors stored in the file are checked against the preset's, then dropped; VinVL's
  `attribute.feature_extractor.*` (a copy of the box head's res5) is checked equal, then dropped.

`infer_spec` reads the architecture's sizes (depth, widths, groups, classes, attributes, RPN width, FPN and MLP
widths) from the tensors, so a file built for another width still loads with the code path of the official one.
"""
from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from visfeat.detection.resnet import BLOCKS
from visfeat.detection.statedict import load_strict

if TYPE_CHECKING:  # .model imports torchvision (slow to import): gridfeats reads its .pth through this module alone
    from visfeat.detection.model import DetectorSpec



def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".pkl":
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        if "blobs" in data:
            raise ValueError(f"{path}: a Caffe2 blob file; visfeat reads detectron2 pickles with module names")
        data = data.get("model", data)
        return {k: torch.as_tensor(np.asarray(v)) for k, v in data.items()}
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    return {k.removeprefix("module."): v for k, v in data.items()}


def is_maskrcnn_benchmark(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("backbone.body.", "rpn.head.")) for k in state)


def _rename_resnet(key: str) -> str:
    """maskrcnn-benchmark ResNet names -> ours (detectron2's)."""
    key = re.sub(r"stem\.bn1\.", "stem.conv1.norm.", key)
    key = re.sub(r"layer(\d)\.(\d+)\.", lambda m: f"res{int(m.group(1)) + 1}.{m.group(2)}.", key)
    key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
    key = key.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return key


_MRCNN_RENAMES = [  # (prefix in the file, ours); applied in order, first match wins
    ("rpn.head.cls_logits.", "proposal_generator.rpn_head.objectness_logits."),
    ("rpn.head.bbox_pred.", "proposal_generator.rpn_head.anchor_deltas."),
    ("rpn.head.conv.", "proposal_generator.rpn_head.conv."),
    ("roi_heads.box.feature_extractor.head.layer4.", "roi_heads.res5."),  # C4 res5 head (layer4 -> res5 below)
    ("roi_heads.box.feature_extractor.", "roi_heads.box_head."),  # FPN MLP head: fc6, fc7
    ("roi_heads.box.predictor.", "roi_heads.box_predictor."),
    ("attribute.predictor.", "attribute."),
]


def from_maskrcnn_benchmark(state: dict[str, torch.Tensor], fpn: bool, path="checkpoint"
                            ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Rename a maskrcnn-benchmark state dict to our module names. Returns (state, stored cell anchors)."""
    out: dict[str, torch.Tensor] = {}
    anchors: dict[int, torch.Tensor] = {}
    attr_res5: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        if m := re.fullmatch(r"rpn\.anchor_generator\.cell_anchors\.(\d+)", key):
            anchors[int(m.group(1))] = v
            continue
        if key.startswith("attribute.feature_extractor.head.layer4."):
            attr_res5[_rename_resnet("roi_heads.res5." + key[len("attribute.feature_extractor.head.layer4."):])] = v
            continue
        if key.startswith("backbone.body."):
            rest = _rename_resnet(key[len("backbone.body."):])
            out[("backbone.body." if fpn else "backbone.") + rest] = v
            continue
        for old, new in _MRCNN_RENAMES:
            if key.startswith(old):
                rest = key[len(old):]
                if new == "roi_heads.res5.":
                    rest = _rename_resnet("layer4." + rest)[len("res5."):]
                out[new + rest] = v
                break
        else:
            out[key] = v  # unknown: the strict load names it
    for k, v in attr_res5.items():
        if k not in out or out[k].shape != v.shape or not torch.equal(out[k], v):
            raise KeyError(f"{path}: attribute.feature_extractor differs from the box head's res5 at {k!r}; "
                           "visfeat shares one res5 head as scene_graph_benchmark's checkpoints do")
    return out, [anchors[i] for i in sorted(anchors)]


def _count(state: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_spec(state: dict[str, torch.Tensor], base: DetectorSpec) -> DetectorSpec:
    """`base` with the sizes the tensors imply; the strides, pooling, anchors and thresholds stay `base`'s.
    `state` has our names (after `from_maskrcnn_benchmark` for that layout)."""
    fpn = base.fpn
    body = "backbone.body." if fpn else "backbone."

    def shape(name):
        if name not in state:
            kind = "FPN" if fpn else "C4"
            raise KeyError(f"checkpoint has no {name!r}: not a {kind} detector layout this preset reads")
        return tuple(state[name].shape)

    res5 = body + "res5." if fpn else "roi_heads.res5."
    blocks = (_count(state, body + "res2."), _count(state, body + "res3."), _count(state, body + "res4."),
              _count(state, res5))
    depth = next((d for d, b in BLOCKS.items() if b == blocks), None)
    if depth is None:
        raise KeyError(f"checkpoint has {blocks} blocks in res2..res5: not a ResNet-50/101/152")
    bottleneck, per_group = shape(body + "res2.0.conv2.weight")[:2]
    resnet = dataclasses.replace(
        base.resnet, depth=depth, stem_out=shape(body + "stem.conv1.weight")[0],
        res2_out=shape(body + "res2.0.conv3.weight")[0], num_groups=bottleneck // per_group,
        width_per_group=per_group)
    hidden = shape("proposal_generator.rpn_head.conv.weight")[0]
    anchors = shape("proposal_generator.rpn_head.objectness_logits.weight")[0]
    per_cell = len(base.rpn.ratios) * (1 if base.rpn.fpn_strides else len(base.rpn.sizes))
    if anchors != per_cell:
        raise KeyError(f"checkpoint RPN predicts {anchors} anchors per cell, the preset has {per_cell} "
                       f"({len(base.rpn.sizes)} sizes, {len(base.rpn.ratios)} ratios)")
    num_classes = shape("roi_heads.box_predictor.cls_score.weight")[0] - 1
    bbox = shape("roi_heads.box_predictor.bbox_pred.weight")[0]
    out = dataclasses.replace(
        base, resnet=resnet, rpn=dataclasses.replace(base.rpn, hidden=hidden), num_classes=num_classes,
        class_agnostic=bbox == (8 if base.legacy else 4))
    if fpn:
        out = dataclasses.replace(out, fpn_channels=shape("backbone.fpn.fpn_inner1.weight")[0],
                                  mlp_dim=shape("roi_heads.box_head.fc6.weight")[0])
    if base.attr_head == "vinvl":
        attrs = state.get("attribute.attr_score.weight")
        if attrs is not None:
            out = dataclasses.replace(out, num_attrs=attrs.shape[0] - 1,
                                      attr_cls_dim=shape("attribute.cls_embedding.weight")[1],
                                      attr_dim=shape("attribute.fc_attr.weight")[0])
        else:
            out = dataclasses.replace(out, num_attrs=0)
    else:
        attrs = state.get("roi_heads.box_predictor.attr_score.weight")
        out = dataclasses.replace(out, num_attrs=0 if attrs is None else attrs.shape[0] - 1)
    return out


ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"  # HF modeling_frcnn keeps them as a parameter


def check_anchors(model: torch.nn.Module, stored: list[torch.Tensor], path) -> None:
    """Cell anchors stored in a file must equal the ones the preset generates (sizes, ratios, convention)."""
    ours = model.proposal_generator.level_cell_anchors()
    if stored and (len(stored) != len(ours) or any(
            a.shape != b.shape or not torch.allclose(a.float().cpu(), b.cpu(), atol=1e-3)
            for a, b in zip(stored, ours))):
        raise KeyError(f"{path}: its cell anchors differ from the preset's anchor sizes/ratios")


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path,
              anchors: list[torch.Tensor] | None = None) -> None:
    """Strict load (`statedict.load_strict`). Cell anchors stored in the file (the unc-nlp conversion,
    maskrcnn-benchmark files) must equal the ones the preset generates."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    stored = list(anchors or [])
    if ANCHORS_KEY in state:
        stored.append(state.pop(ANCHORS_KEY))
    check_anchors(model, stored, path)
    load_strict(model, state, path, "the detector")
