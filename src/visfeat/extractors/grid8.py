"""X-LXMERT grid features: fc6 of the VMB X-152 FPN detector over a fixed grid of boxes.

As allenai/x-lxmert feature_extraction/coco_extract_grid_feature.py does it: the image as float32 BGR minus the
Caffe mean, resized by OpenCV bilinear to int(scale * side) floored to a multiple of 32 on each side
independently (scale: 800 short / 1333 long, Caffe's rule), no padding; an 8x8 grid of equal boxes
(j*W//8, i*H//8, (j+1)*W//8, (i+1)*H//8) in resized pixels, row-major, goes to the box head as proposals
(FPN level by the "+1" area rule); the feature is fc6. Output (8, 8, 2048) per image.

Differences from the script, on purpose: RGBA and grey images are converted to RGB first (the script would
fail on RGBA); images of different sizes share a batch (zero-padded, each masked to its own extent, so the
result equals a batch of one, which is all the script allows); on the CPU each image runs alone, as in the
script (`detector.group_sizes`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from visfeat.detection.model import FPNDetector
from visfeat.detection.preprocess import SIZES, CaffeFloatPreprocessor, pad_batch
from visfeat.extractors.base import Extractor, FieldSpec
from visfeat.extractors.detector import build_extractor, by_size, group_sizes


def grid_boxes(h: int, w: int, n: int) -> np.ndarray:
    """coco_extract_grid_feature.py get_grid_bbox: (n*n, 4) float32, row-major."""
    gh, gw = h // n, w // n
    return np.asarray([[j * gw, i * gh, (j + 1) * gw, (i + 1) * gh] for i in range(n) for j in range(n)],
                      np.float32)


class Grid8Extractor(Extractor):
    group_by_aspect = True
    channels_last = "amp"

    def __init__(self, preset: str, options: dict[str, Any], weights_sha256: str, device, amp: bool,
                 model: FPNDetector):
        super().__init__(preset, options, weights_sha256, device, amp)
        self.group_sizes = group_sizes(self.device)
        self.model = self.placed(model)
        if options["size"] not in SIZES:
            raise ValueError(f"{preset}: size {options['size']!r} unknown; named sizes: {', '.join(SIZES)}")
        self.n = int(options["grid_size"])

    def fields(self) -> list[FieldSpec]:
        return [FieldSpec("grid", (self.n, self.n, self.model.out_channels))]

    def preprocessor(self) -> CaffeFloatPreprocessor:
        short, max_size = SIZES[self.config["size"]]
        return CaffeFloatPreprocessor(short, max_size, tuple(self.config["pixel_mean"]), mode="floor32",
                                      resize=self.config["resize"])

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"image": pad_batch([s["image"] for s in samples]),
                "input_hw": torch.stack([s["input_hw"] for s in samples])}

    def forward(self, batch: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        return by_size(self._forward, batch, [tuple(int(v) for v in hw) for hw in batch["input_hw"]],
                       self.group_sizes)

    @torch.inference_mode()
    def _forward(self, batch: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        images = self.on_device(batch["image"])
        in_hw = [tuple(int(v) for v in hw) for hw in batch["input_hw"]]
        boxes = [torch.from_numpy(grid_boxes(h, w, self.n)).to(self.device) for h, w in in_hw]
        with self.autocast():
            fc6, _ = self.model.regions(self.model.features(images, in_hw), boxes, in_hw)
        fc6 = fc6.float().cpu().numpy().reshape(len(in_hw), self.n, self.n, -1)
        return [{"grid": g} for g in fc6]


def build(preset, weights: str | None, device, amp: bool, options: dict[str, Any]) -> Grid8Extractor:
    return build_extractor(Grid8Extractor, preset, weights, device, amp, options)
