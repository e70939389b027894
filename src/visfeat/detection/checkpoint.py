"""Read the official detector weight files into our modules (whose names are detectron2's).

- detectron2 pickles (py-bottom-up-attention's faster_rcnn_from_caffe*.pkl, grid-feats-vqa): a pickled dict
  {"model": {name: ndarray}, ...} with detectron2 module names.
- torch files (`.pth`, `.bin`): a state dict, or {"model": state dict}. `unc-nlp/frcnn-vg-finetuned`'s
  pytorch_model.bin (HF transformers examples/research_projects/lxmert/modeling_frcnn.py) uses the same names as
  the fork's pickle, plus `num_batches_tracked` and the cell anchors as a parameter (checked, then dropped).

`infer_spec` reads the architecture's sizes (depth, widths, groups, classes, attributes, RPN width) from the
tensors, so a file built for another width still loads with the code path of the official one.
"""
from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ..statedict import load_strict
from .model import DetectorSpec
from .resnet import BLOCKS



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


def _count(state: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_spec(state: dict[str, torch.Tensor], base: DetectorSpec) -> DetectorSpec:
    """`base` with the sizes the tensors imply; the strides, pooling, anchors and thresholds stay `base`'s."""
    def shape(name):
        if name not in state:
            raise KeyError(f"checkpoint has no {name!r}: not a detectron2 C4 detector layout")
        return tuple(state[name].shape)

    blocks = (_count(state, "backbone.res2."), _count(state, "backbone.res3."), _count(state, "backbone.res4."),
              _count(state, "roi_heads.res5."))
    depth = next((d for d, b in BLOCKS.items() if b == blocks), None)
    if depth is None:
        raise KeyError(f"checkpoint has {blocks} blocks in res2..res5: not a ResNet-50/101/152")
    bottleneck, per_group = shape("backbone.res2.0.conv2.weight")[:2]
    resnet = dataclasses.replace(
        base.resnet, depth=depth, stem_out=shape("backbone.stem.conv1.weight")[0],
        res2_out=shape("backbone.res2.0.conv3.weight")[0], num_groups=bottleneck // per_group,
        width_per_group=per_group)
    hidden = shape("proposal_generator.rpn_head.conv.weight")[0]
    anchors = shape("proposal_generator.rpn_head.objectness_logits.weight")[0]
    if anchors != len(base.rpn.sizes) * len(base.rpn.ratios):
        raise KeyError(f"checkpoint RPN predicts {anchors} anchors per cell, the preset has "
                       f"{len(base.rpn.sizes)} sizes x {len(base.rpn.ratios)} ratios")
    num_classes = shape("roi_heads.box_predictor.cls_score.weight")[0] - 1
    bbox = shape("roi_heads.box_predictor.bbox_pred.weight")[0]
    attrs = state.get("roi_heads.box_predictor.attr_score.weight")
    return dataclasses.replace(
        base, resnet=resnet, rpn=dataclasses.replace(base.rpn, hidden=hidden), num_classes=num_classes,
        class_agnostic=bbox == 4, num_attrs=0 if attrs is None else attrs.shape[0] - 1)


ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"  # HF modeling_frcnn keeps them as a parameter


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strict load (`statedict.load_strict`). Cell anchors stored in the file
    (the unc-nlp conversion) must equal the ones the preset generates."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    anchors = state.pop(ANCHORS_KEY, None)
    if anchors is not None:
        ours = model.proposal_generator.cell_anchors
        if anchors.shape != ours.shape or not torch.allclose(anchors.float(), ours.cpu(), atol=1e-3):
            raise KeyError(f"{path}: its cell anchors differ from the preset's anchor sizes/ratios")
    load_strict(model, state, path, "the detector")
