"""Region features from two-stage detectors: bottom-up attention (detectron2 fork) and the maskrcnn-benchmark
family (VinVL's scene_graph_benchmark, VMB's vqa-maskrcnn-benchmark).

The forward follows the originals' extraction scripts: backbone (C4 to res4, or FPN), RPN proposals, every
proposal through the box head (C4: RoI pooling + res5, mean = the region feature; FPN: ROIAlign over levels +
MLP, fc6 = the region feature), class / box / attribute predictions, then a named box selection
(`detection.select`) per image. Region features are those of the selected PROPOSAL RoIs; saved boxes are what
the selection says, in original pixels (detectron2: scaled, clipped, empty dropped; maskrcnn-benchmark:
BoxList.resize, scale only). With given boxes (forced mode) the given boxes are pooled and no selection runs.
VinVL's attributes come from a second res5 pass over the final boxes (`DetectorSpec.attr_head`).

Preprocessing (option `preprocess`: detectron2, maskrcnn, caffe_float) is `detection.preprocess`'s, the model
`detection.build`'s. A batch is zero-padded to its largest image; each image's canvas is its own size rounded up
to `size_divisibility` (the originals pad a lone image to 32). Padding never changes an image's result: the
backbone zeroes activations outside each canvas, the RPN uses only anchors inside it, and RoIs are pooled from
each image's own crop of the maps (`detection.heads.per_image`), so an image gives the same regions alone or in
any batch. Batching by aspect ratio keeps the wasted compute small; on the CPU a batch runs one image at a
time (`group_sizes`), no padding at all.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from visfeat.detection import select as selection
from visfeat.detection.boxes import clip, nonempty
from visfeat.detection.build import detector_from_file
from visfeat.detection.model import C4Detector, FPNDetector
from visfeat.detection.preprocess import (
    PREPROCESS,
    SIZES,
    CaffeFloatPreprocessor,
    DetectorPreprocessor,
    LegacyPreprocessor,
    caffe_scale,
    ceil_to,
    pad_batch,
)
from visfeat.extractors.base import Extractor, FieldSpec


class RegionExtractor(Extractor):
    group_by_aspect = True  # run_extraction orders images so a batch shares orientation and similar shape
    channels_last = "amp"

    def __init__(self, preset: str, options: dict[str, Any], weights_sha256: str, device, amp: bool,
                 model: C4Detector | FPNDetector):
        super().__init__(preset, options, weights_sha256, device, amp)
        self.group_sizes = group_sizes(self.device)
        self.model = self.placed(model)
        size = options["size"]
        if size not in SIZES:
            raise ValueError(f"{preset}: size {size!r} unknown; named sizes: {', '.join(SIZES)}")
        self.short, self.max_size = SIZES[size]
        self.selection = options["selection"]
        if self.selection not in selection.STRATEGIES:
            raise ValueError(f"{preset}: selection {self.selection!r} unknown; known: {', '.join(selection.STRATEGIES)}")
        self.strategy = selection.STRATEGIES[self.selection]
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
            return CaffeFloatPreprocessor(self.short, self.max_size, tuple(o["pixel_mean"]),
                                          resize=o.get("resize", "numpy"))
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
        """Forced-boxes mode: features for these boxes (original pixels, x1y1x2y2) per image id; None: selection."""
        from visfeat.sources.given_boxes import digest

        self.given_boxes = boxes
        self.config["given_boxes"] = None if boxes is None else digest(boxes)

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        div = int(self.config["size_divisibility"])
        canvas = [(ceil_to(int(h), div), ceil_to(int(w), div)) for h, w in batch["input_hw"]]
        return by_size(self._forward, batch, canvas, self.group_sizes)

    @torch.inference_mode()
    def _forward(self, batch: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        m, o = self.model, self.config
        images = self.on_device(batch["image"])
        in_hw = [tuple(int(v) for v in hw) for hw in batch["input_hw"]]
        orig_hw = [tuple(int(v) for v in hw) for hw in batch["orig_hw"]]
        div = int(o["size_divisibility"])
        # each image's canvas: its own size padded as it would be alone (the originals pad to 32)
        canvas = [(ceil_to(h, div), ceil_to(w, div)) for h, w in in_hw]
        clip_hw = canvas if o.get("clip_to") == "canvas" else in_hw  # vqa-maskrcnn-benchmark clips to the canvas
        with self.autocast():
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
        """The strategy's declared options from the preset, and what it needs of this image."""
        if scale is None and "scale" in self.strategy.image:  # the preprocessor gave none: the same rule's factor
            scale = caffe_scale(*orig_hw, self.short, self.max_size)
        image = {"orig_hw": orig_hw, "short": self.short, "max_size": self.max_size, "scale": scale}
        opts = {k: self.config[k] for k in self.strategy.options if k in self.config}  # else the strategy's default
        return {**opts, **{k: image[k] for k in self.strategy.image}}

    def _vinvl_attributes(self, feat, sels, canvas) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """scene_graph_benchmark AttributePostProcessor: softmax over A+1, column 0 zeroed, scores <= threshold
        zeroed, top `attr_per_box` per box (the per-image cap comes out a no-op). Ids 0-based; -1 where empty."""
        o = self.config
        labels = torch.cat([s.obj_id + 1 for s in sels])
        if len(labels) == 0:
            return [(torch.zeros(0, int(o["attr_per_box"])),) * 2 for _ in sels]
        with self.autocast():
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


def group_sizes(device: torch.device) -> bool:
    """Whether a batch runs one image at a time (no padding) rather than padded as one: on the CPU, where
    convolutions over the padding cost in proportion and even a batch of equal sizes costs more per image than
    batch 1 (bench/README.md, "originals.py" and "Settings behind the CPU defaults"); not on an accelerator,
    where one padded batch is cheaper than several small ones."""
    return torch.device(device).type == "cpu"


def size_groups(sizes: list[tuple[int, int]], by_size: bool) -> list[list[int]]:
    """Which images of a batch run together: with `by_size` each image alone, else all of them."""
    if not by_size:
        return [list(range(len(sizes)))]
    return [[i] for i in range(len(sizes))]


def by_size(forward, batch: dict[str, Any], sizes: list[tuple[int, int]], group: bool) -> list[dict[str, np.ndarray]]:
    """`forward` over each of `size_groups`, its padded "image" cropped to the group's size; outputs in batch
    order. Results are those of the whole batch: padding never changes an image's result."""
    groups = size_groups(sizes, group)
    if len(groups) == 1:
        return forward(batch)
    outs: list[dict[str, np.ndarray] | None] = [None] * len(sizes)
    for idx in groups:
        h, w = sizes[idx[0]]
        sub = {k: v[idx] if torch.is_tensor(v) else [v[i] for i in idx] for k, v in batch.items()}
        sub["image"] = sub["image"][:, :, :h, :w].contiguous()
        for i, out in zip(idx, forward(sub)):
            outs[i] = out
    return outs


def build_extractor(cls, preset, weights: str | None, device, amp: bool, options: dict[str, Any]):
    """`cls(preset name, options, weights sha256, device, amp, model)` on the preset's weights file (region and
    grid8 extractors share the model)."""
    from visfeat.extractors.weights import resolve_weights

    path, sha = resolve_weights(preset, weights)
    model, options = detector_from_file(path, options)
    return cls(preset.name, options, sha, device, amp, model)


def build(preset, weights: str | None, device, amp: bool, options: dict[str, Any]) -> RegionExtractor:
    return build_extractor(RegionExtractor, preset, weights, device, amp, options)
