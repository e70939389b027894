"""Region features from two-stage detectors (bottom-up attention and the other C4 presets).

The forward follows py-bottom-up-attention's demo/detectron2_mscoco_proposal_maxnms.py `doit()`: backbone to
res4, RPN proposals, every proposal through RoI pooling + res5 (its mean is the region feature), class / box /
attribute predictions, then a named box selection (`detection.select`) per image. Region features are those of
the selected PROPOSAL RoIs; saved boxes are what the selection says (regressed for maxnms), scaled back to the
original image, clipped, and empty ones dropped (detectron2 detector_postprocess). With given boxes (forced
mode) the given boxes are pooled instead of proposals and no selection runs.

Preprocessing (DataLoader workers): detectron2 ResizeShortestEdge with PIL bilinear on the uint8 image, BGR,
minus the Caffe mean, std 1; a batch is zero-padded to its largest image (after normalisation, as
detectron2's ImageList does). Unlike detectron2, padding does not change an image's result: the backbone zeroes
activations outside each image's extent and the RPN uses only anchors inside it (`detection.resnet`), so an
image gives the same regions alone or in any batch. Batching by aspect ratio keeps the wasted compute small.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..detection import select as selection
from ..detection.boxes import clip, nonempty
from ..detection.checkpoint import infer_spec, load_into, read_state_dict
from ..detection.model import C4Detector, DetectorSpec
from ..detection.resnet import ResNetSpec
from ..detection.rpn import RPNSpec
from .base import Extractor, FieldSpec

# Named input sizes (shortest edge / longest edge cap).
SIZES = {
    "600/1000": (600, 1000),  # LXMERT: demo/detectron2_mscoco_proposal_maxnms.py INPUT.MIN/MAX_SIZE_TEST
    "800/1333": (800, 1333),  # detectron2 config/defaults.py (iglue, the fork's attribute notebooks)
}


def resized_hw(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge.get_transform (data/transforms/transform_gen.py), float for float."""
    scale = short * 1.0 / min(h, w)
    if h < w:
        newh, neww = short, scale * w
    else:
        newh, neww = scale * h, short
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


class DetectorPreprocessor:
    """RGB PIL image -> {"image": (3, h, w) float32 normalised, "input_hw", "orig_hw"}. Picklable."""

    def __init__(self, short: int, max_size: int, mean: tuple[float, float, float], std: tuple[float, float, float],
                 bgr: bool):
        self.short, self.max_size, self.bgr = short, max_size, bgr
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        w, h = image.size
        nh, nw = resized_hw(h, w, self.short, self.max_size)
        # detectron2 ResizeTransform.apply_image: PIL resize of the uint8 image, BILINEAR
        arr = np.asarray(image.resize((nw, nh), Image.BILINEAR), dtype=np.float32)
        if self.bgr:
            arr = arr[:, :, ::-1]
        arr = (arr - self.mean) / self.std
        return {"image": torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))),
                "input_hw": torch.tensor([nh, nw]), "orig_hw": torch.tensor([h, w])}


def pad_batch(images: list[torch.Tensor], divisible: int = 0) -> torch.Tensor:
    """Zero-pad to the largest H and W (rounded up to `divisible`), bottom and right (detectron2 ImageList)."""
    h = max(t.shape[1] for t in images)
    w = max(t.shape[2] for t in images)
    if divisible > 0:
        h, w = -(-h // divisible) * divisible, -(-w // divisible) * divisible
    out = images[0].new_zeros((len(images), 3, h, w))
    for i, t in enumerate(images):
        out[i, :, : t.shape[1], : t.shape[2]] = t
    return out


class RegionExtractor(Extractor):
    group_by_aspect = True  # run_extraction orders images so a batch shares orientation and similar shape

    def __init__(self, preset: str, model: C4Detector, options: dict[str, Any], device, amp: bool, sha: str | None):
        self.preset = preset
        self.config = dict(options)
        self.weights_sha256 = sha
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        size = options["size"]
        if size not in SIZES:
            raise ValueError(f"{preset}: size {size!r} unknown; named sizes: {', '.join(SIZES)}")
        self.short, self.max_size = SIZES[size]
        self.selection = options["selection"]
        if self.selection not in selection.STRATEGIES:
            raise ValueError(f"{preset}: selection {self.selection!r} unknown; known: {', '.join(selection.STRATEGIES)}")
        self.given_boxes: dict[str, np.ndarray] | None = None
        self.config["given_boxes"] = None  # the digest of the boxes in forced-boxes mode

    # -- interface --------------------------------------------------------------------------------------------
    def fields(self) -> list[FieldSpec]:
        d = self.model.out_channels
        out = [FieldSpec("features", (d,), ragged="regions"), FieldSpec("boxes", (4,), ragged="regions"),
               FieldSpec("obj_id", (), "int64", ragged="regions"), FieldSpec("obj_conf", (), ragged="regions")]
        if self.model.spec.num_attrs:
            out += [FieldSpec("attr_id", (), "int64", ragged="regions"), FieldSpec("attr_conf", (), ragged="regions")]
        if self.config.get("keep_cls_prob"):
            out.append(FieldSpec("cls_prob", (self.model.spec.num_classes + 1,), ragged="regions"))
        out.append(FieldSpec("num_boxes", (), "int64"))
        return out

    def preprocessor(self) -> DetectorPreprocessor:
        o = self.config
        return DetectorPreprocessor(self.short, self.max_size, tuple(o["pixel_mean"]), tuple(o["pixel_std"]),
                                    o["input_format"] == "BGR")

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"image": pad_batch([s["image"] for s in samples], int(self.config["size_divisibility"])),
                "input_hw": torch.stack([s["input_hw"] for s in samples]),
                "orig_hw": torch.stack([s["orig_hw"] for s in samples])}

    def set_given_boxes(self, boxes: dict[str, np.ndarray] | None) -> None:
        """Forced-boxes mode: features for these boxes (original pixels, x1y1x2y2) per image id."""
        from ..given_boxes import digest

        self.given_boxes = boxes
        self.config["given_boxes"] = None if boxes is None else digest(boxes)

    # -- forward ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, batch: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        m = self.model
        images = batch["image"].to(self.device, non_blocking=True)
        in_hw = [tuple(int(v) for v in hw) for hw in batch["input_hw"]]
        orig_hw = [tuple(int(v) for v in hw) for hw in batch["orig_hw"]]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            feat = m.features(images, in_hw)
            if self.given_boxes is not None:
                boxes = [self._given(image_id, ih, oh) for image_id, ih, oh in zip(batch["image_id"], in_hw, orig_hw)]
            else:
                boxes = [b for b, _ in m.proposals(feat, in_hw)]
            regions = m.regions(feat, boxes)
            logits, deltas, attr_logits = m.predict(regions)
        regions, logits = regions.float(), logits.float()
        probs = torch.softmax(logits, -1)
        outs = []
        for i, rows in enumerate(self._split(boxes)):
            fg = m.split_background(probs[rows])
            if self.given_boxes is not None:
                conf, cls = fg.max(1)
                sel = selection.Selection(torch.arange(len(fg), device=fg.device), boxes[i].float(), cls, conf)
            else:
                class_boxes = clip(m.decode(deltas[rows], boxes[i]), in_hw[i])
                sel = selection.select(self.selection, boxes[i].float(), fg, class_boxes,
                                       **self._select_args(orig_hw[i]))
            outs.append(self._output(sel, rows, regions, probs, attr_logits, in_hw[i], orig_hw[i]))
        return outs

    def _select_args(self, orig_hw: tuple[int, int]) -> dict[str, Any]:
        o = self.config
        if self.selection == "maxnms":
            start = float(o["nms_start"])
            return {"min_boxes": o["min_boxes"], "max_boxes": o["max_boxes"],
                    "thresholds": tuple(np.arange(start, 1.0, 0.1))}
        if self.selection == "perclass":
            return {"min_boxes": o["min_boxes"], "max_boxes": o["max_boxes"], "conf_thresh": o["conf_thresh"],
                    "nms_thresh": o["nms_thresh"], "orig_hw": orig_hw, "short": self.short, "max_size": self.max_size}
        return {"max_boxes": o["max_boxes"]}

    @staticmethod
    def _split(boxes: list[torch.Tensor]) -> list[slice]:
        out, a = [], 0
        for b in boxes:
            out.append(slice(a, a + len(b)))
            a += len(b)
        return out

    def _given(self, image_id: str, in_hw, orig_hw) -> torch.Tensor:
        b = torch.as_tensor(np.asarray(self.given_boxes[image_id], np.float32).reshape(-1, 4), device=self.device)
        sy, sx = in_hw[0] / orig_hw[0], in_hw[1] / orig_hw[1]
        return b * torch.tensor([sx, sy, sx, sy], device=self.device)

    def _output(self, sel, rows: slice, regions, probs, attr_logits, in_hw, orig_hw) -> dict[str, np.ndarray]:
        keep = sel.keep + rows.start
        sy, sx = orig_hw[0] / in_hw[0], orig_hw[1] / in_hw[1]
        if sel.original:
            boxes, ok = sel.boxes, None
        elif self.given_boxes is not None:
            boxes, ok = sel.boxes * torch.tensor([sx, sy, sx, sy], device=sel.boxes.device), None
        else:  # detectron2 modeling/postprocessing.py detector_postprocess: scale, clip, drop empty
            boxes = clip(sel.boxes * torch.tensor([sx, sy, sx, sy], device=sel.boxes.device), orig_hw)
            ok = nonempty(boxes)
        out = {"features": regions[keep], "boxes": boxes, "obj_id": sel.obj_id, "obj_conf": sel.obj_conf}
        if attr_logits is not None:
            attr = attr_logits[keep].float()
            if self.config["attr_softmax"] == "all":  # MILVLG extract_utils.py: softmax over all, then drop "no attr"
                attr = attr.softmax(-1)
                attr = attr[:, :-1] if self.model.spec.bg_last else attr[:, 1:]
            else:  # py-bottom-up-attention demo_feature_extraction_attr.ipynb: logits[..., :-1].softmax(-1)
                attr = attr[:, :-1] if self.model.spec.bg_last else attr[:, 1:]
                attr = attr.softmax(-1)
            out["attr_conf"], out["attr_id"] = attr.max(-1)
        if self.config.get("keep_cls_prob"):
            out["cls_prob"] = probs[keep]
        if ok is not None:
            out = {k: v[ok] for k, v in out.items()}
        res = {k: v.detach().cpu().numpy() for k, v in out.items()}
        for k in ("obj_id", "attr_id"):
            if k in res:
                res[k] = res[k].astype(np.int64)
        for k in ("features", "boxes", "obj_conf", "attr_conf", "cls_prob"):
            if k in res:
                res[k] = res[k].astype(np.float32)
        res["num_boxes"] = np.int64(len(res["boxes"]))
        return res


def detector_spec(options: dict[str, Any]) -> DetectorSpec:
    """The architecture the preset names (sizes are then read from the checkpoint by `infer_spec`)."""
    o = options
    return DetectorSpec(
        resnet=ResNetSpec(depth=o["depth"], stride_in_1x1=o["stride_in_1x1"], caffe_maxpool=o["caffe_maxpool"],
                          res5_dilation=o["res5_dilation"], num_groups=o.get("num_groups", 1),
                          width_per_group=o.get("width_per_group", 64)),
        rpn=RPNSpec(sizes=tuple(o["anchor_sizes"]), ratios=tuple(o["anchor_ratios"]),
                    pre_nms_topk=o["rpn_pre_nms_topk"], post_nms_topk=o["rpn_post_nms_topk"],
                    nms_thresh=o["rpn_nms_thresh"]),
        pooler=o["pooler"], pooler_resolution=o["pooler_resolution"], num_classes=o["num_classes"],
        num_attrs=o.get("num_attrs", 0), bg_last=o.get("bg_last", True))


def build(preset, weights: str | None, device, amp: bool, options: dict[str, Any]) -> RegionExtractor:
    from ..weights import resolve_weights

    path, sha = resolve_weights(preset, weights)
    state = read_state_dict(path)
    spec = infer_spec(state, detector_spec(options))
    model = C4Detector(spec)
    load_into(model, state, path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return RegionExtractor(preset.name, model, options, device, amp, sha)
