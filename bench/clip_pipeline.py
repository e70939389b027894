"""CLIP pipeline cost on this machine: end-to-end images/s vs the model's forward alone on pre-decoded tensors,
and decode+preprocess images/s per DataLoader worker. Ratios are against baselines measured in the same run.

Weights: a full-size random-init CLIP (speed does not depend on the values) saved in the official TorchScript
layout, so the real loading code runs. Images: the sample photos, repeated.

    python bench/clip_pipeline.py [--model vit32|rn50] [--images 96] [--batch-size 16] [--workers 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import visfeat  # noqa: E402
from visfeat.engine.items import Item
from visfeat.engine.run import run_extraction  # noqa: E402
from visfeat.sources.images import load_image  # noqa: E402
from visfeat.sources.sample import install_sample  # noqa: E402

FULL = {  # openai/CLIP architectures (clip/model.py build_model dims)
    "vit32": ("clip-vit-b32", dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32)),
    "rn50": ("clip-rn50", dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64, vision_patch_size=None)),
}


def make_weights(kind: str, dest: Path) -> Path:
    from helpers.tiny_models import original_clip_module, save_torchscript

    m = original_clip_module()
    torch.manual_seed(0)
    model = m.CLIP(**FULL[kind][1], context_length=77, vocab_size=49408, transformer_width=512,
                   transformer_heads=8, transformer_layers=12)
    m.convert_weights(model)
    return save_torchscript(model.state_dict(), dest)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit32", choices=sorted(FULL))
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--worker-start", choices=["fork", "forkserver", "spawn"], help="default: visfeat's choice")
    ap.add_argument("--amp", action="store_true", help="also run with fp16 autocast (CUDA) and compare features")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="visfeat-bench-"))
    try:
        src = tmp / "src"
        names = install_sample(src)
        imgs = tmp / "imgs"
        imgs.mkdir()
        items = []
        for k in range(a.images):
            name = names[k % len(names)]
            p = imgs / f"{k:05d}_{name}"
            shutil.copyfile(src / name, p)
            items.append(Item(p.stem, p.name, str(p)))
        preset = FULL[a.model][0]
        weights = make_weights(a.model, tmp / "w.pt")
        ex = visfeat.load_extractor(preset, weights=str(weights), device=a.device)

        # 1. decode + preprocess, one process (= one worker)
        t = time.perf_counter()
        tensors = [ex.preprocess(load_image(it.abspath)) for it in items]
        dec = len(items) / (time.perf_counter() - t)
        batches = [ex.collate(tensors[i:i + a.batch_size]) for i in range(0, len(tensors), a.batch_size)]

        rows = []
        ref = None
        for amp in ([False, True] if a.amp else [False]):
            ex.amp = amp and a.device == "cuda"
            # 2. forward alone on pre-decoded tensors (one warm-up batch first)
            ex.forward(batches[0])
            sync(a.device)
            t = time.perf_counter()
            outs = [o for b in batches for o in ex.forward(b)]
            sync(a.device)
            fwd = len(items) / (time.perf_counter() - t)
            # 3. end to end: DataLoader workers decoding while the model runs, flushed batches, final store
            t = time.perf_counter()
            res = run_extraction(ex, items, tmp / f"out{int(amp)}.h5", batch_size=a.batch_size, workers=a.workers,
                                 worker_start=a.worker_start)
            e2e = len(items) / (time.perf_counter() - t)
            if ref is None:
                ref = outs
                cos = None
            else:
                cos = {f: min(cosine(o[f], r[f]) for o, r in zip(outs, ref)) for f in ("global", "grid")}
            rows.append((amp, fwd, e2e, cos, res["timing"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"CLIP pipeline benchmark: {preset} (full-size, random weights), {a.images} images, batch {a.batch_size}, "
          f"{a.workers} workers, device {a.device}, torch threads {torch.get_num_threads()}")
    print(f"  decode+preprocess, per worker   : {dec:8.1f} img/s")
    for amp, fwd, e2e, cos, timing in rows:
        tag = "amp " if amp else "fp32"
        print(f"  [{tag}] model forward alone      : {fwd:8.1f} img/s")
        print(f"  [{tag}] end to end (extract)     : {e2e:8.1f} img/s")
        print(f"  [{tag}] end-to-end / forward     : {e2e / fwd:8.2f}")
        steady = (a.images - a.batch_size) / max(1e-9, a.images / e2e - timing["first_batch"])
        print(f"  [{tag}] after the first batch    : {steady:8.1f} img/s (first batch after {timing['first_batch']:.2f} s)")
        print(f"  [{tag}] extract seconds by stage : " + ", ".join(f"{k} {v:.2f}" for k, v in timing.items()))
        if cos:
            print(f"  [{tag}] min cosine vs fp32       : global {cos['global']:.5f}, grid cell {cos['grid']:.5f}")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cosine(a, b) -> float:
    """Smallest cosine over the rows of the last axis (per grid cell for grids)."""
    import numpy as np

    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return float((np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


if __name__ == "__main__":
    main()
