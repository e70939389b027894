"""Bottom-up attention on this machine: images/s of the full-size R-101 C4 detector at 600/1000 (or 800/1333),
one image at a time vs batches grouped by aspect ratio, the end-to-end pipeline, and optionally the original
implementation on the same weights and images in the same run (ratio).

Weights: a full-size random-init detector in the official detectron2 pickle layout (1600 classes, 400
attributes; speed does not depend on the values: the RPN always hands 300 proposals to res5), loaded by the
real code. Images: the sample photos.

    python bench/butd_pipeline.py [--images 4] [--batch-size 4] [--size 600/1000] [--device cpu|cuda] [--amp]
                                  [--reference-cmd "CMD"]

`--reference-cmd`: a command that runs the original (py-bottom-up-attention) and prints one JSON line
{"seconds_per_image": x}; it gets `--weights PKL --images DIR --size MIN/MAX` appended. visfeat ships no such
command (it would be the original's code); bench/README.md says how the figures there were taken.
On CUDA with --amp it also prints the smallest cosine of AMP vs fp32 region features (same boxes).
"""
from __future__ import annotations

import argparse
import json
import pickle
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import visfeat
from visfeat.detection.build import detector_spec
from visfeat.detection.model import C4Detector
from visfeat.engine.items import folder_items
from visfeat.engine.run import run_extraction
from visfeat.extractors.registry import resolve_options
from visfeat.sources.images import load_image
from visfeat.sources.sample import install_sample

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")


def make_weights(dest: Path) -> Path:
    torch.manual_seed(0)
    model = C4Detector(detector_spec(resolve_options("butd-r101-36")))
    with open(dest, "wb") as f:
        # detectron2 pickle layout: {"model": {name: ndarray}, "__author__": ...} (without __author__ detectron2
        # treats the file as a Caffe2 conversion and nests it again)
        pickle.dump({"model": {k: v.numpy() for k, v in model.state_dict().items()}, "__author__": "visfeat-bench"}, f)
    return dest


def forward_rate(ex, images, batch_size: int) -> float:
    samples = [ex.preprocess(im) for im in images]
    ex.forward({**ex.collate(samples[:1]), "image_id": ["warm"]})  # warm-up
    if ex.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for a in range(0, len(samples), batch_size):
        chunk = samples[a:a + batch_size]
        ex.forward({**ex.collate(chunk), "image_id": [str(k) for k in range(len(chunk))]})
    if ex.device.type == "cuda":
        torch.cuda.synchronize()
    return len(samples) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--size", default="600/1000")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--reference-cmd")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        install_sample(tmp / "all")
        imgs = tmp / "imgs"
        imgs.mkdir()
        for k in range(a.images):
            name = PHOTOS[k % len(PHOTOS)]
            (imgs / f"{k:04d}{Path(name).suffix}").write_bytes((tmp / "all" / name).read_bytes())
        weights = make_weights(tmp / "butd_full.pkl")
        ex = visfeat.load_extractor("butd-r101-36", weights=str(weights), device=a.device, size=a.size)
        images = [load_image(p) for p in sorted(imgs.iterdir())]
        rows = {"forward, one image at a time": forward_rate(ex, images, 1),
                f"forward, batches of {a.batch_size}": forward_rate(ex, images, a.batch_size)}
        t = time.perf_counter()
        run_extraction(ex, folder_items(imgs), tmp / "out.h5", batch_size=a.batch_size, workers=a.workers)
        rows["end to end (run_extraction)"] = a.images / (time.perf_counter() - t)
        if a.amp and a.device == "cuda":
            amp = visfeat.load_extractor("butd-r101-36", weights=str(weights), device="cuda", amp=True, size=a.size)
            rows[f"AMP forward, batches of {a.batch_size}"] = forward_rate(amp, images, a.batch_size)
            boxes = {str(k): o["boxes"] for k, o in enumerate(
                ex.forward({**ex.collate([ex.preprocess(im) for im in images[:4]]), "image_id": list("0123")}))}
            cos = []
            for e in (ex, amp):
                e.set_given_boxes(boxes)
            f32 = ex.forward({**ex.collate([ex.preprocess(im) for im in images[:4]]), "image_id": list("0123")})
            f16 = amp.forward({**amp.collate([amp.preprocess(im) for im in images[:4]]), "image_id": list("0123")})
            for x, y in zip(f32, f16):
                u, v = x["features"], y["features"]
                cos.append(((u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))).min())
            print(f"min cosine AMP vs fp32 region features (given boxes): {min(cos):.5f}")
        if a.reference_cmd:
            cmd = shlex.split(a.reference_cmd) + ["--weights", str(weights), "--images", str(imgs), "--size", a.size]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"reference command failed ({p.returncode}):\n{p.stderr[-3000:]}")
            out = p.stdout.strip().splitlines()[-1]
            rows["original (reference command)"] = 1.0 / json.loads(out)["seconds_per_image"]
    base = rows["forward, one image at a time"]
    print(f"butd-r101-36 full size, {a.size}, {a.images} images, device {a.device}, torch threads "
          f"{torch.get_num_threads()}")
    for k, v in rows.items():
        print(f"  {k:40s} {v:8.3f} img/s  ({v / base:.2f}x one-at-a-time)")


if __name__ == "__main__":
    sys.exit(main())
