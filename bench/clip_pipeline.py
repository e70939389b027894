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
from visfeat.extract import Item, run_extraction  # noqa: E402
from visfeat.images import load_image  # noqa: E402
from visfeat.sample import install_sample  # noqa: E402

FULL = {  # openai/CLIP architectures (clip/model.py build_model dims)
    "vit32": ("clip-vit-b32", dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32)),
    "rn50": ("clip-rn50", dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64, vision_patch_size=None)),
}


def make_weights(kind: str, dest: Path) -> Path:
    from tiny_models import original_clip_module, save_torchscript

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
    ap.add_argument("--amp", action="store_true")
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
        ex = visfeat.load_extractor(preset, weights=str(weights), device=a.device, amp=a.amp)

        # 1. decode + preprocess, one process (= one worker)
        t = time.perf_counter()
        tensors = [ex.preprocess(load_image(it.abspath)) for it in items]
        dec = len(items) / (time.perf_counter() - t)

        # 2. forward alone on pre-decoded tensors (one warm-up batch first)
        batches = [ex.collate(tensors[i:i + a.batch_size]) for i in range(0, len(tensors), a.batch_size)]
        ex.forward(batches[0])
        if a.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for b in batches:
            ex.forward(b)
        if a.device == "cuda":
            torch.cuda.synchronize()
        fwd = len(items) / (time.perf_counter() - t)

        # 3. end to end: DataLoader workers decoding while the model runs, flushed batches, final store
        t = time.perf_counter()
        run_extraction(ex, items, tmp / "out.h5", batch_size=a.batch_size, workers=a.workers)
        e2e = len(items) / (time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"CLIP pipeline benchmark: {preset} (full-size, random weights), {a.images} images, batch {a.batch_size}, "
          f"{a.workers} workers, device {a.device}{' amp' if a.amp else ''}, torch threads {torch.get_num_threads()}")
    print(f"  decode+preprocess, per worker : {dec:8.1f} img/s")
    print(f"  model forward alone            : {fwd:8.1f} img/s")
    print(f"  end to end (visfeat extract)   : {e2e:8.1f} img/s")
    print(f"  end-to-end / forward-alone     : {e2e / fwd:8.2f}")


if __name__ == "__main__":
    main()
