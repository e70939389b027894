"""The generic encoder presets (`timm`, `openclip`) at B size: forward alone, visfeat end to end, a user's loop.

Models (random weights: speed does not depend on the values), each saved in its hub layout and loaded by the real
code (`visfeat.load_extractor(..., weights=FILE)`):
- timm `vit_base_patch16_dinov3.lvd1689m` at its tag's size (256x256, 256 patches + 5 prefix tokens),
  `model.safetensors`;
- open_clip `ViT-B-16-SigLIP2` / `webli` (224x224; the whole model is saved, `open_clip_model.safetensors`, the
  image tower is what runs), `global` + `grid` (+ `prefix` for timm) stored.
Images: N copies of the sample photos fitted to 640x480 (every other one 480x640), quality-90 JPEGs
(bench/throughput.py `make_image_sets`). For each model, fp32 and bf16 autocast (`amp`), the configurations
alternating within each of `--repeat` rounds (median):
  (a) forward alone: the extractor's forward on batches preprocessed beforehand (throughput.py `forward_alone`);
  (b) visfeat end to end: `run_extraction(extractor, items, out, batch_size=B, workers=0)` (throughput.py
      `end_to_end`), and (b)/(a);
  (c) the loop a user writes with the library: its own eval transform in a torch DataLoader (2 workers, batch
      32) and the model's forward (open_clip: `create_model_and_transforms`' steps, `model.encode_image`; timm:
      `timm.data.create_transform` + `forward_head(forward_features(x), pre_logits=True)`), inference mode,
      `torch.autocast("cpu", bfloat16)` for amp; and (b)/(c);
  (d) bf16 speed-up per measurement (amp / fp32 img/s) and the smallest cosine, over all N images, of amp vs fp32
      `global`.

    python bench/encoders.py [--images 32] [--batch-size 16] [--repeat 3] [--models timm,openclip]
                             [--loop-batch 32] [--loop-workers 2]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from throughput import (
    end_to_end,
    forward_alone,
    items_of,
    make_image_sets,
    min_cosine,
    predecoded,
)

import visfeat

TIMM_NAME = "vit_base_patch16_dinov3.lvd1689m"
OC_NAME, OC_TAG = "ViT-B-16-SigLIP2", "webli"


# ---- weights in the hub layouts -----------------------------------------------------------------------------
def timm_weights(folder: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = timm.create_model(TIMM_NAME, pretrained=False).state_dict()
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


def openclip_weights(folder: Path) -> Path:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = open_clip.create_model(OC_NAME, pretrained=None, pretrained_text=False).state_dict()
    folder.mkdir(parents=True)
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(folder / "open_clip_model.safetensors"))
    return folder / "open_clip_model.safetensors"


# ---- the user's loop (c) ------------------------------------------------------------------------------------
class Files(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def user_model(family: str, path: Path):
    """(model, transform, encode) as a user builds them with the library alone."""
    if family == "timm":
        import timm
        import timm.data

        model = timm.create_model(TIMM_NAME, pretrained=True, pretrained_cfg_overlay={"file": str(path)}).eval()
        transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
        return transform, lambda x: model.forward_head(model.forward_features(x), pre_logits=True)
    import open_clip
    from open_clip.transform import (
        PreprocessCfg,
        image_transform_v2,
        merge_preprocess_dict,
    )
    from safetensors.torch import load_file

    # create_model_and_transforms(OC_NAME, pretrained=OC_TAG) without the download: the model, the file's weights,
    # the tag's eval transform
    model = open_clip.create_model(OC_NAME, pretrained=None, pretrained_text=False)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    cfg = merge_preprocess_dict(PreprocessCfg(), open_clip.get_pretrained_cfg(OC_NAME, OC_TAG))
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False), model.encode_image


def user_loop(transform, encode, paths: list[str], amp: bool, batch: int, workers: int) -> float:
    """img/s of the plain loop, DataLoader start included (as run_extraction's start is)."""
    t = time.perf_counter()
    loader = torch.utils.data.DataLoader(Files(paths, transform), batch_size=batch, num_workers=workers)
    out = []
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=amp):
        for x in loader:
            out.append(encode(x).float().numpy())
    n = sum(len(o) for o in out)
    return n / (time.perf_counter() - t)


# ---- one model ----------------------------------------------------------------------------------------------
def measure(family: str, path: Path, items, a: argparse.Namespace, out_dir: Path) -> dict:
    opts = {"model": TIMM_NAME} if family == "timm" else {"model": OC_NAME, "pretrained": OC_TAG}
    exs = {amp: visfeat.load_extractor(family, weights=str(path), device="cpu", amp=amp, **opts)
           for amp in (False, True)}
    batches = {amp: predecoded(ex, items, a.batch_size) for amp, ex in exs.items()}
    transform, encode = user_model(family, path)
    paths = [it.abspath for it in items]
    runs = {(k, amp): [] for k in ("forward", "e2e", "loop") for amp in (False, True)}
    glob = {}
    for r in range(a.repeat):
        for amp, ex in exs.items():
            rate, _ = forward_alone(ex, batches[amp])
            runs[("forward", amp)].append(rate)
            out = out_dir / f"{family}-{int(amp)}.h5"
            runs[("e2e", amp)].append(end_to_end(ex, items, out, a.batch_size, 0)[0])
            out.unlink()
            runs[("loop", amp)].append(user_loop(transform, encode, paths, amp, a.loop_batch, a.loop_workers))
            print(f"[encoders] {family} round {r + 1} {'amp' if amp else 'fp32'}: "
                  + ", ".join(f"{k} {v[-1]:.2f}" for (k, m), v in runs.items() if m == amp), file=sys.stderr,
                  flush=True)
    for amp, ex in exs.items():  # every image's global, for the agreement
        glob[amp] = np.stack([o["global"] for b in batches[amp] for o in ex.forward(b)])
    med = {k: float(np.median(v)) for k, v in runs.items()}
    return {"med": med, "runs": runs, "cos": min_cosine(glob[False], glob[True]), "shape": {f.name: f.shape for f in exs[False].fields()},
            "size": exs[False].config["preprocess"]["size"]}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="timm,openclip")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--loop-batch", type=int, default=32)
    ap.add_argument("--loop-workers", type=int, default=2)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    command = "python bench/encoders.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    names = {"timm": f"timm {TIMM_NAME}", "openclip": f"open_clip {OC_NAME}/{OC_TAG}"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="visfeat-encoders-") as tmp:
        tmp = Path(tmp)
        photos = make_image_sets(tmp / "photos")["jpeg"]
        items = items_of(photos, a.images, tmp / "items")
        (tmp / "out").mkdir()
        for fam in a.models.split(","):
            path = (timm_weights if fam == "timm" else openclip_weights)(tmp / f"w-{fam}")
            results[fam] = measure(fam, path, items, a, tmp / "out")
            path.unlink()
    print(f"`{command}`\n")
    print(f"CPU, {torch.get_num_threads()} torch threads; torch {torch.__version__}; {a.images} JPEGs 640x480/480x640; "
          f"visfeat batch {a.batch_size}, workers 0; loop batch {a.loop_batch}, {a.loop_workers} DataLoader workers; "
          f"median of {a.repeat} rounds, configurations alternating\n")
    print("| model | precision | (a) forward alone img/s | (b) visfeat end to end img/s | (b)/(a) | "
          "(c) user loop img/s | (b)/(c) |")
    print("|---|---|---|---|---|---|---|")
    for fam, r in results.items():
        m = r["med"]
        for amp in (False, True):
            print(f"| {names[fam]} ({r['size'][0]}x{r['size'][1]}) | {'bf16 amp' if amp else 'fp32'} | "
                  f"{m[('forward', amp)]:.2f} | {m[('e2e', amp)]:.2f} | {m[('e2e', amp)] / m[('forward', amp)]:.2f} | "
                  f"{m[('loop', amp)]:.2f} | {m[('e2e', amp)] / m[('loop', amp)]:.2f} |")
    print("\n| model | bf16 speed-up: forward | end to end | user loop | min cos global amp vs fp32 |")
    print("|---|---|---|---|---|")
    for fam, r in results.items():
        m = r["med"]
        sp = [m[(k, True)] / m[(k, False)] for k in ("forward", "e2e", "loop")]
        print(f"| {names[fam]} | {sp[0]:.2f} | {sp[1]:.2f} | {sp[2]:.2f} | {r['cos']:.5f} |")
    print("\nruns (img/s, in order):")
    for fam, r in results.items():
        for (k, amp), v in r["runs"].items():
            print(f"  {fam} {k} {'amp' if amp else 'fp32'}: {', '.join(f'{x:.2f}' for x in v)}")
    print("fields stored: " + "; ".join(f"{fam} {r['shape']}" for fam, r in results.items()))


if __name__ == "__main__":
    main()
