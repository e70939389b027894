"""Region features from two-stage detectors: bottom-up attention (detectron2 fork) and the maskrcnn-benchmark
family (VinVL's scene_graph_benchmark, VMB's vqa-maskrcnn-benchmark).

The forward follows the originals' extraction scripts: backbone (C4 to res4, or FPN), RPN proposals, every
proposal through the box head (C4: RoI pooling + res5, mean = the region feature; FPN: ROIAlign over levels +
MLP, fc6 = the region feature), class / box / attribute predictions, then a named box selection
(`detection.select`) per image. Region features are those of the selected PROPOSAL RoIs; saved boxes are what
the selection says, in original pixels (detectron2: scaled, clipped, empty dropped; maskrcnn-benchmark:
BoxList.resize, scale only). With given boxes (forced mode) the given boxes are pooled and no selection runs.
VinVL's attributes come from a second res5 pass over the final boxes (`DetectorSpec.attr_head`).

Preprocessing (DataLoader workers), by option `preprocess`:
- `detectron2` (butd): ResizeShortestEdge with PIL bilinear on the uint8 image, BGR, minus the mean.
- `maskrcnn` (VinVL): maskrcnn-benchmark Resize.get_size, PIL bilinear, ToTensor x255 BGR, minus the mean.
- `caffe_float` (VMB): float BGR minus the mean, OpenCV-bilinear resize by one factor (numpy reimplementation).
A batch is zero-padded to its largest image; each image's canvas is its own size rounded up to
`size_divisibility` (the originals pad a lone image to 32). Padding never changes an image's result: the
backbone zeroes activations outside each canvas, the RPN uses only anchors inside it, and RoIs are pooled from
each image's own crop of the maps (`detection.heads.per_image`), so an image gives the same regions alone or in
any batch. Batching by aspect ratio keeps the wasted compute small.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..detection import select as selection
from ..detection.boxes import clip, nonempty
from ..detection.checkpoint import (from_maskrcnn_benchmark, infer_spec, is_maskrcnn_benchmark, load_into,
                                    read_state_dict)
from ..detection.model import C4Detector, DetectorSpec, FPNDetector
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


def legacy_resized_hw(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """maskrcnn-benchmark data/transforms/transforms.py Resize.get_size (scene_graph_benchmark, VinVL):
    the short side capped by round(max * short / long), the other side truncated."""
    size = short
    lo, hi = float(min(w, h)), float(max(w, h))
    if hi / lo * size > max_size:
        size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def caffe_scale(h: int, w: int, short: int, max_size: int) -> float:
    """The one factor of MMF extract_features_vmb.py _image_transform (and X-LXMERT's, Caffe's get_image_blob)."""
    scale = short / min(h, w)
    if np.round(scale * max(h, w)) > max_size:
        scale = max_size / max(h, w)
    return scale


def _linear_taps(n_out: int, n_in: int, scale: float):
    """OpenCV INTER_LINEAR source taps for one axis (imgproc/src/resize.cpp): src = (dst + 0.5) * scale - 0.5,
    clamped to the edges, no antialiasing."""
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    wgt = f - i0
    wgt[i0 < 0] = 0
    i0 = np.clip(i0, 0, n_in - 1)
    wgt[i0 >= n_in - 1] = 0
    return i0, np.minimum(i0 + 1, n_in - 1), wgt.astype(np.float32)


def cv2_linear_resize(arr: np.ndarray, out_hw: tuple[int, int], scale_xy: tuple[float, float]) -> np.ndarray:
    """cv2.resize(INTER_LINEAR) of a float32 (H, W, C) image, done in numpy (OpenCV is not a dependency):
    `scale_xy` is OpenCV's source step per output pixel (1 / fx, or in/out sizes when dsize is given)."""
    h, w = arr.shape[:2]
    x0, x1, wx = _linear_taps(out_hw[1], w, scale_xy[0])
    y0, y1, wy = _linear_taps(out_hw[0], h, scale_xy[1])
    rows = arr[:, x0] * (1 - wx)[None, :, None] + arr[:, x1] * wx[None, :, None]
    return rows[y0] * (1 - wy)[:, None, None] + rows[y1] * wy[:, None, None]


class CaffeFloatPreprocessor:
    """MMF extract_features_vmb.py / X-LXMERT coco_extract_grid_feature.py input: the RGB image as float32,
    to BGR, minus the Caffe mean, then OpenCV bilinear resize of the float image. `mode` "scale": by one factor
    (sides rounded as OpenCV does); "floor32": X-LXMERT grid8, int(scale * side) floored to a multiple of 32 per
    side. Returns {"image", "input_hw", "orig_hw", "scale"}; the canvas is padded to 32 by the collate."""

    def __init__(self, short: int, max_size: int, mean: tuple[float, float, float], mode: str = "scale"):
        self.short, self.max_size, self.mode = short, max_size, mode
        self.mean = np.asarray(mean, np.float64)

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        im = np.asarray(image, dtype=np.float32)[:, :, ::-1].copy()
        im -= self.mean  # float32 in place, as `im -= np.array([...])` in the scripts
        h, w = im.shape[:2]
        scale = caffe_scale(h, w, self.short, self.max_size)
        if self.mode == "floor32":
            nw, nh = int(scale * w), int(scale * h)
            nw, nh = max(32, nw - nw % 32), max(32, nh - nh % 32)
            out = cv2_linear_resize(im, (nh, nw), (w / nw, h / nh))
        else:
            nw, nh = int(np.rint(w * scale)), int(np.rint(h * scale))  # OpenCV saturate_cast rounds
            out = cv2_linear_resize(im, (nh, nw), (1.0 / scale, 1.0 / scale))
        return {"image": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)),
                "input_hw": torch.tensor([nh, nw]), "orig_hw": torch.tensor([h, w]),
                "scale": torch.tensor(scale, dtype=torch.float64)}


class LegacyPreprocessor:
    """scene_graph_benchmark (VinVL) build_transforms at test: Resize.get_size, PIL bilinear resize of the RGB
    image (torchvision F.resize), ToTensor (/255), TO_BGR255 (x255, BGR), minus mean, divided by std."""

    def __init__(self, short: int, max_size: int, mean: tuple[float, float, float], std: tuple[float, float, float]):
        self.short, self.max_size = short, max_size
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        w, h = image.size
        nh, nw = legacy_resized_hw(h, w, self.short, self.max_size)
        arr = np.asarray(image.resize((nw, nh), Image.BILINEAR), dtype=np.uint8)
        t = torch.from_numpy(arr.transpose(2, 0, 1).copy()).float().div(255)[[2, 1, 0]] * 255
        t = (t - self.mean) / self.std
        return {"image": t.contiguous(), "input_hw": torch.tensor([nh, nw]), "orig_hw": torch.tensor([h, w])}


def ceil_to(n: int, k: int) -> int:
    return -(-n // k) * k if k > 0 else n


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


PREPROCESS = ("detectron2", "maskrcnn", "caffe_float")


class RegionExtractor(Extractor):
    group_by_aspect = True  # run_extraction orders images so a batch shares orientation and similar shape

    def __init__(self, preset: str, model: C4Detector | FPNDetector, options: dict[str, Any], device, amp: bool,
                 sha: str | None):
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
        self.style = options.get("preprocess", "detectron2")
        if self.style not in PREPROCESS:
            raise ValueError(f"{preset}: preprocess {self.style!r} unknown; known: {', '.join(PREPROCESS)}")
        self.legacy = model.spec.legacy
        self.vinvl_attrs = model.spec.attr_head == "vinvl" and model.spec.num_attrs > 0
        self.given_boxes: dict[str, np.ndarray] | None = None
        self.config["given_boxes"] = None  # the digest of the boxes in forced-boxes mode

    # -- interface --------------------------------------------------------------------------------------------
    def fields(self) -> list[FieldSpec]:
        d = self.model.out_channels
        out = [FieldSpec("features", (d,), ragged="regions"), FieldSpec("boxes", (4,), ragged="regions"),
               FieldSpec("obj_id", (), "int64", ragged="regions"), FieldSpec("obj_conf", (), ragged="regions")]
        if self.model.spec.num_attrs:
            out += [FieldSpec("attr_id", (), "int64", ragged="regions"), FieldSpec("attr_conf", (), ragged="regions")]
        if self.vinvl_attrs:
            k = int(self.config["attr_per_box"])
            out += [FieldSpec("attr_ids", (k,), "int64", ragged="regions"),
                    FieldSpec("attr_confs", (k,), ragged="regions")]
        if self.config.get("keep_cls_prob"):
            out.append(FieldSpec("cls_prob", (self.model.spec.num_classes + 1,), ragged="regions"))
        out.append(FieldSpec("num_boxes", (), "int64"))
        return out

    def preprocessor(self):
        o = self.config
        if self.style == "caffe_float":
            return CaffeFloatPreprocessor(self.short, self.max_size, tuple(o["pixel_mean"]))
        if self.style == "maskrcnn":
            return LegacyPreprocessor(self.short, self.max_size, tuple(o["pixel_mean"]), tuple(o["pixel_std"]))
        return DetectorPreprocessor(self.short, self.max_size, tuple(o["pixel_mean"]), tuple(o["pixel_std"]),
                                    o["input_format"] == "BGR")

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        out = {"image": pad_batch([s["image"] for s in samples], int(self.config["size_divisibility"])),
               "input_hw": torch.stack([s["input_hw"] for s in samples]),
               "orig_hw": torch.stack([s["orig_hw"] for s in samples])}
        if "scale" in samples[0]:
            out["scale"] = torch.stack([s["scale"] for s in samples])
        return out

    def set_given_boxes(self, boxes: dict[str, np.ndarray] | None) -> None:
        """Forced-boxes mode: features for these boxes (original pixels, x1y1x2y2) per image id."""
        from ..given_boxes import digest

        self.given_boxes = boxes
        self.config["given_boxes"] = None if boxes is None else digest(boxes)

    # -- forward ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, batch: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        m, o = self.model, self.config
        images = batch["image"].to(self.device, non_blocking=True)
        in_hw = [tuple(int(v) for v in hw) for hw in batch["input_hw"]]
        orig_hw = [tuple(int(v) for v in hw) for hw in batch["orig_hw"]]
        div = int(o["size_divisibility"])
        # each image's canvas: its own size padded as it would be alone (the originals pad to 32)
        canvas = [(ceil_to(h, div), ceil_to(w, div)) for h, w in in_hw]
        clip_hw = canvas if o.get("clip_to") == "canvas" else in_hw  # vqa-maskrcnn-benchmark clips to the canvas
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            feat = m.features(images, canvas)
            if self.given_boxes is not None:
                boxes = [self._given(image_id, ih, oh) for image_id, ih, oh in zip(batch["image_id"], in_hw, orig_hw)]
            else:
                boxes = [b for b, _ in m.proposals(feat, clip_hw, canvas)]
            regions, head_in = m.regions(feat, boxes, canvas)
            logits, deltas, attr_logits = m.predict(head_in)
        regions, logits = regions.float(), logits.float()
        probs = torch.softmax(logits, -1)
        sels = []
        for i, rows in enumerate(self._split(boxes)):
            fg = m.split_background(probs[rows])
            if self.given_boxes is not None:
                conf, cls = fg.max(1)
                sels.append(selection.Selection(torch.arange(len(fg), device=fg.device), boxes[i].float(), cls, conf))
                continue
            if self.selection == "nms_filter" and o.get("ignore_box_regression"):
                class_boxes = boxes[i].float()[:, None, :].expand(-1, fg.shape[1], 4)
            else:
                class_boxes = m.decode(deltas[rows], boxes[i])
            class_boxes = clip(class_boxes, in_hw[i], offset=1 if self.legacy else 0)
            scale = float(batch["scale"][i]) if "scale" in batch else None
            sels.append(selection.select(self.selection, boxes[i].float(), fg, class_boxes,
                                         **self._select_args(orig_hw[i], scale)))
        attrs = self._vinvl_attributes(feat, sels, canvas) if self.vinvl_attrs else None
        return [self._output(sel, rows, regions, probs, attr_logits, in_hw[i], orig_hw[i],
                             None if attrs is None else attrs[i])
                for i, (sel, rows) in enumerate(zip(sels, self._split(boxes)))]

    def _select_args(self, orig_hw: tuple[int, int], scale: float | None) -> dict[str, Any]:
        o = self.config
        if self.selection == "maxnms":
            start = float(o["nms_start"])
            return {"min_boxes": o["min_boxes"], "max_boxes": o["max_boxes"],
                    "thresholds": tuple(np.arange(start, 1.0, 0.1))}
        if self.selection == "perclass":
            return {"min_boxes": o["min_boxes"], "max_boxes": o["max_boxes"], "conf_thresh": o["conf_thresh"],
                    "nms_thresh": o["nms_thresh"], "orig_hw": orig_hw, "short": self.short, "max_size": self.max_size}
        if self.selection == "nms_filter":
            return {"min_boxes": o["min_boxes"], "max_boxes": o["max_boxes"], "conf_thresh": o["conf_thresh"],
                    "nms_thresh": o["nms_thresh"]}
        if self.selection == "vmb":
            if scale is None:
                scale = caffe_scale(*orig_hw, self.short, self.max_size)
            return {"max_boxes": o["max_boxes"], "conf_thresh": o["conf_thresh"], "nms_thresh": o["nms_thresh"],
                    "scale": scale}
        return {"max_boxes": o["max_boxes"]}

    def _vinvl_attributes(self, feat, sels, canvas) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """scene_graph_benchmark AttributePostProcessor: softmax over A+1, column 0 zeroed, scores <= threshold
        zeroed, top `attr_per_box` per box (the per-image cap comes out a no-op). Ids 0-based; -1 where empty."""
        o = self.config
        labels = torch.cat([s.obj_id + 1 for s in sels])
        if len(labels) == 0:
            return [(torch.zeros(0, int(o["attr_per_box"])),) * 2 for _ in sels]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            logits = self.model.attributes(feat, [s.boxes for s in sels], labels, canvas)
        p = logits.float().softmax(-1)
        p[:, 0] = 0.0
        p[p <= float(o["attr_thresh"])] = 0.0
        conf, idx = p.topk(int(o["attr_per_box"]), dim=1)
        idx = torch.where(conf > 0, idx - 1, torch.full_like(idx, -1))
        out, a = [], 0
        for s in sels:
            out.append((idx[a:a + len(s.keep)], conf[a:a + len(s.keep)]))
            a += len(s.keep)
        return out

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

    def _output(self, sel, rows: slice, regions, probs, attr_logits, in_hw, orig_hw, attrs=None
                ) -> dict[str, np.ndarray]:
        keep = sel.keep + rows.start
        sy, sx = orig_hw[0] / in_hw[0], orig_hw[1] / in_hw[1]
        factor = torch.tensor([sx, sy, sx, sy], device=sel.boxes.device)
        if sel.original:
            boxes, ok = sel.boxes, None
        elif self.given_boxes is not None or self.legacy:  # maskrcnn-benchmark BoxList.resize: scale only
            boxes, ok = sel.boxes * factor, None
        else:  # detectron2 modeling/postprocessing.py detector_postprocess: scale, clip, drop empty
            boxes = clip(sel.boxes * factor, orig_hw)
            ok = nonempty(boxes)
        out = {"features": regions[keep], "boxes": boxes, "obj_id": sel.obj_id, "obj_conf": sel.obj_conf}
        if attrs is not None:
            out["attr_ids"], out["attr_confs"] = attrs
            out["attr_id"], out["attr_conf"] = attrs[0][:, 0], attrs[1][:, 0]
        elif attr_logits is not None:
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
        for k in ("obj_id", "attr_id", "attr_ids"):
            if k in res:
                res[k] = res[k].astype(np.int64)
        for k in ("features", "boxes", "obj_conf", "attr_conf", "attr_confs", "cls_prob"):
            if k in res:
                res[k] = res[k].astype(np.float32)
        # MMF's VMB num_boxes counts the kept boxes with a nonzero max_conf; everywhere else: all kept
        res["num_boxes"] = np.int64(len(res["boxes"]) if sel.num_boxes is None else sel.num_boxes)
        return res


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
    from ..detection.mrcnn_yaml import options_from_yaml

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


def build_extractor(cls, preset, weights: str | None, device, amp: bool, options: dict[str, Any]):
    """`cls(preset name, model, options, device, amp, weights sha256)` on the preset's weights file (region and
    grid8 extractors share the model)."""
    from ..weights import resolve_weights

    path, sha = resolve_weights(preset, weights)
    options = with_config_yaml(options)
    model = load_detector(read_state_dict(path), options, path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return cls(preset.name, model, options, device, amp, sha)


def build(preset, weights: str | None, device, amp: bool, options: dict[str, Any]) -> RegionExtractor:
    return build_extractor(RegionExtractor, preset, weights, device, amp, options)
