"""The maskrcnn-benchmark family on this machine: images/s of the full-size VinVL X152-C4, VMB X-152 / X-101
FPN and X-LXMERT grid8 models, one image at a time vs batches grouped by aspect ratio (ratio in the same run;
on the CPU also each batch padded as one forward against the default there, each image alone:
`extractors.detector.group_sizes`), and with --amp on CUDA the AMP rate plus the smallest cosine of AMP vs fp32
features on the same boxes.

Models: full size (1594/524 or 1600 classes), random init with the preset's architecture, built directly from
the preset's spec (speed does not depend on the values: the RPN always hands 300 (VinVL) or 1000 (VMB)
proposals to the box head). Images: the sample photos.

    python bench/maskrcnn_family.py [--presets vinvl-x152c4,vmb-x152,vmb-x101,grid8-x152] [--images 2]
                                    [--batch-size 2] [--device cpu|cuda] [--amp]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from butd_pipeline import forward_rate  # bench/ is on sys.path when a bench script runs

from visfeat.detection.build import detector_spec
from visfeat.detection.model import C4Detector, FPNDetector
from visfeat.extractors.detector import RegionExtractor
from visfeat.extractors.grid8 import Grid8Extractor
from visfeat.extractors.registry import resolve_options
from visfeat.sources.images import load_image
from visfeat.sources.sample import install_sample

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")


def full_size(preset: str, device: str, amp: bool, **options):
    opts = resolve_options(preset, options)
    spec = detector_spec(opts)
    if opts.get("fpn"):
        spec = dataclasses.replace(spec, fpn_channels=512, mlp_dim=2048)  # e2e_..._FPN_512 yaml: OUT 512, MLP 2048
    elif spec.attr_head == "vinvl":
        spec = dataclasses.replace(spec, attr_cls_dim=256, attr_dim=512)  # sg_defaults.py CLS/ATTR_EMD_DIM
    torch.manual_seed(0)
    model = FPNDetector(spec) if spec.fpn else C4Detector(spec)
    cls = Grid8Extractor if preset.startswith("grid8") else RegionExtractor
    return cls(preset, model, opts, device, amp, None)


def amp_cosine(preset: str, ex, samples) -> float:
    """Smallest cosine of AMP vs fp32 features on the same boxes (given boxes; grid8: its fixed grid)."""
    amp = full_size(preset, "cuda", True)
    amp.model.load_state_dict(ex.model.state_dict())
    batch = {**ex.collate(samples), "image_id": [str(k) for k in range(len(samples))]}
    f32 = ex.forward(batch)
    if isinstance(ex, RegionExtractor):
        boxes = {str(k): o["boxes"] for k, o in enumerate(f32)}
        for e in (ex, amp):
            e.set_given_boxes(boxes)
        f32 = ex.forward(batch)
    f16 = amp.forward(batch)
    key = "grid" if "grid" in f32[0] else "features"
    cos = []
    for x, y in zip(f32, f16):
        u, v = x[key].reshape(-1, x[key].shape[-1]), y[key].reshape(-1, y[key].shape[-1])
        cos.append(((u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1) + 1e-12)).min())
    return float(min(cos))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="vinvl-x152c4,vmb-x152,vmb-x101,grid8-x152")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        install_sample(Path(tmp))
        images = [load_image(Path(tmp) / PHOTOS[k % len(PHOTOS)]) for k in range(a.images)]
    print(f"{a.images} images, device {a.device}, torch threads {torch.get_num_threads()}")
    for preset in a.presets.split(","):
        ex = full_size(preset, a.device, False)
        one = forward_rate(ex, images, 1)
        batched = forward_rate(ex, images, a.batch_size)
        line = (f"  {preset:14s} one at a time {one:7.3f} img/s, batches of {a.batch_size} {batched:7.3f} img/s "
                f"({batched / one:.2f}x)")
        if ex.group_sizes:  # the CPU default: each image alone; against one padded forward per batch
            ex.group_sizes = False
            padded = forward_rate(ex, images, a.batch_size)
            ex.group_sizes = True
            line += f", padded as one {padded:7.3f} img/s (one at a time {batched / padded:.2f}x)"
        if a.amp and a.device == "cuda":
            amp = full_size(preset, "cuda", True)
            amp.model.load_state_dict(ex.model.state_dict())
            r = forward_rate(amp, images, a.batch_size)
            line += f", AMP {r:7.3f} img/s ({r / batched:.2f}x fp32), min cosine AMP vs fp32 " \
                    f"{amp_cosine(preset, ex, [ex.preprocess(im) for im in images[:4]]):.5f}"
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
