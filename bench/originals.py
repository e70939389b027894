"""The original extraction scripts beside ours, end to end on the same photos and the same full-size weights.

Pairs: `gridfeats-x152` vs facebookresearch/grid-feats-vqa extract_grid_feature.py (`main(args)` on detectron2),
`grid8-x152` vs allenai/x-lxmert feature_extraction/coco_extract_grid_feature.py (run as `__main__`, unmodified,
on vqa-maskrcnn-benchmark). Each run is a fresh process (start-up counts, as a user pays it), and the runs are
interleaved (each of `--repeat` rounds runs every side once: ours, original, ours, original, ...) so machine noise
hits both alike. Ours is the real CLI, `visfeat extract --preset P --weights W --images DIR --device cpu` plus one
`--ours-args` per ours side (default: one side, `--workers 0 --batch-size 1`; `--ours-args ""` adds the CLI's
defaults), called in the child as `visfeat.cli.main(argv)`. The originals run with their own defaults
(grid-feats-vqa: detectron2's DATALOADER.NUM_WORKERS 4; X-LXMERT: its DataLoader with 4 workers, batch 1).

Weights: random, full size (speed does not depend on the values), one file per pair read by both sides:
grid-feats-vqa's X-152 as a detectron2 `.pth` with the backbone only (bench/throughput.py `gridfeats_x152`;
detectron2 random-inits the RPN and box heads it finds missing, which the grid extraction never runs), and
X-LXMERT's X-152-FPN built by the fork's own `build_detection_model` from its
configs/visual_genome_vqa/e2e_faster_rcnn_X-152-32x8d-FPN_1x_MLP_2048_FPN_512_test.yaml (seed 0) and saved as
maskrcnn-benchmark does ({"model": state dict}), next to the dumped cfg as X-LXMERT's `mask_rcnn_ckpt/` holds them.
Photos: `--images` copies of the 640x480 / 480x640 quality-90 JPEGs bench/throughput.py makes from the samples.

Each child notes when its imports are done, when its weights are loaded (ours: `load_extractor` returned;
grid-feats-vqa: `DetectionCheckpointer.resume_or_load` returned; X-LXMERT: maskrcnn-benchmark `load_state_dict`
returned) and when it ends; the parent times the whole process (wall) and counts its CPU seconds (user + system of
the child and the DataLoader workers it joined, getrusage(RUSAGE_CHILDREN)): on a shared machine the wall time
moves with other jobs' load far more than the core-seconds do. Start-up = launch to weights loaded (Python
start, imports, model build, weight read/hash/load); per image = (end - loaded) / images.
The originals import with the runtime shims of tests/fixtures/{gridfeats,vmb}/gen/compat.py (their code is not
copied); their extra packages (fvcore, iopath, yacs, opencv) come from `--extra-site`.

    python bench/originals.py --grid-feats-vqa GF --detectron2 D2 --xlxmert XL --vmb VMB --extra-site EXTRA
                              [--pairs gridfeats,grid8] [--images 10] [--repeat 3] [--ours-args "ARGS" ...]
                              [--profile DIR] [--keep DIR]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import runpy
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
GEN = {"gridfeats": REPO / "tests" / "fixtures" / "gridfeats" / "gen", "grid8": REPO / "tests" / "fixtures" / "vmb" / "gen"}
PRESET = {"gridfeats": "gridfeats-x152", "grid8": "grid8-x152"}
ORIGINAL = {"gridfeats": "grid-feats-vqa extract_grid_feature.py", "grid8": "X-LXMERT coco_extract_grid_feature.py"}
GF_CONFIG = "configs/X-152-grid.yaml"  # grid-feats-vqa: the X-152 grid model's config
VMB_CONFIG = "configs/visual_genome_vqa/e2e_faster_rcnn_X-152-32x8d-FPN_1x_MLP_2048_FPN_512_test.yaml"  # VMB fork
XL_SCRIPT = "feature_extraction/coco_extract_grid_feature.py"  # allenai/x-lxmert
XL_SPLIT_DIR = "val2014"  # coco_extract_grid_feature.py SPLIT2DIR["valid"]
DATASET = "visfeat_bench"


# ---- children: one fresh process per run; each writes its timestamps to spec["stamps"] ------------------------
def _stamp(spec: dict, key: str) -> None:
    spec.setdefault("_t", {})[key] = time.time()


def _write(spec: dict) -> None:
    Path(spec["stamps"]).write_text(json.dumps(spec["_t"]))


def _once_after(obj, name: str, spec: dict, key: str) -> None:
    """Wrap obj.name so the moment its first call returns is stamped as `key`."""
    inner = getattr(obj, name)

    def wrapped(*args, **kwargs):
        out = inner(*args, **kwargs)
        if key not in spec["_t"]:
            _stamp(spec, key)
        return out

    setattr(obj, name, wrapped)


def child_ours(spec: dict) -> None:
    import torch  # noqa: F401  (the CLI imports both on its way to the model)
    import visfeat.cli
    import visfeat.engine.run  # noqa: F401
    import visfeat.extractors.registry as registry

    importlib.import_module(registry.get_preset(spec["preset"]).builder.split(":")[0])  # what load_extractor imports
    _stamp(spec, "imports")
    _once_after(registry, "load_extractor", spec, "loaded")
    rc = visfeat.cli.main(spec["argv"])
    _stamp(spec, "end")
    if rc:
        raise SystemExit(f"visfeat extract returned {rc}")


def child_gridfeats(spec: dict) -> None:
    sys.path.insert(0, str(GEN["gridfeats"]))
    import compat

    compat.install(spec["grid_feats_vqa"], spec["detectron2"])
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog
    from PIL import Image

    import extract_grid_feature as extract

    _stamp(spec, "imports")
    records = []
    for image_id, path in enumerate(spec["images"]):
        width, height = Image.open(path).size
        records.append({"file_name": path, "image_id": image_id, "height": height, "width": width})
    DatasetCatalog.register(DATASET, lambda: records)  # the script's datasets are COCO's; ours is the photo list
    extract.dataset_to_folder_mapper[DATASET] = DATASET
    _once_after(DetectionCheckpointer, "resume_or_load", spec, "loaded")
    opts = ["MODEL.WEIGHTS", spec["weights"], "OUTPUT_DIR", spec["out"], "MODEL.DEVICE", "cpu"]
    extract.main(argparse.Namespace(config_file=str(Path(spec["grid_feats_vqa"]) / GF_CONFIG), dataset=DATASET,
                                    opts=opts))
    _stamp(spec, "end")


def child_grid8(spec: dict) -> None:
    sys.path.insert(0, str(GEN["grid8"]))
    import compat

    compat.install(spec["vmb"])
    import maskrcnn_benchmark.utils.model_serialization as serialization
    from maskrcnn_benchmark.config import cfg  # noqa: F401  (what the script imports)
    from maskrcnn_benchmark.modeling.detector import build_detection_model  # noqa: F401
    import cv2, h5py, torchvision, tqdm  # noqa: F401,E401  (the script's own imports)

    _stamp(spec, "imports")
    _once_after(serialization, "load_state_dict", spec, "loaded")
    os.chdir(spec["workdir"])  # its build_mask_rcnn reads ./mask_rcnn_ckpt/
    script = str(Path(spec["xlxmert"]) / XL_SCRIPT)
    sys.argv = [script, "--cocoroot", spec["cocoroot"], "--split", "valid"]
    runpy.run_path(script, run_name="__main__")
    _stamp(spec, "end")


def child_build_grid8_weights(spec: dict) -> None:
    """The fork's own model at full size, seeded, saved in its checkpoint layout, with the cfg it was built from."""
    sys.path.insert(0, str(GEN["grid8"]))
    import compat

    compat.install(spec["vmb"])
    import torch
    from maskrcnn_benchmark.config import cfg
    from maskrcnn_benchmark.modeling.detector import build_detection_model

    cfg.merge_from_file(str(Path(spec["vmb"]) / VMB_CONFIG))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_detection_model(cfg)
    torch.save({"model": model.state_dict()}, spec["weights"])
    Path(spec["config"]).write_text(cfg.dump())


CHILDREN = {"ours": child_ours, "gridfeats": child_gridfeats, "grid8": child_grid8,
            "build_grid8_weights": child_build_grid8_weights}


# ---- parent --------------------------------------------------------------------------------------------------
def child_env(extra_site: str | None) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # CPU on both sides (the X-LXMERT script picks cuda if present)
    paths = [str(REPO / "src"), *([extra_site] if extra_site else []), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def run_child(kind: str, spec: dict, log: Path, env: dict, profile: Path | None = None) -> dict:
    """One child process; returns its stamps plus `launch` and `exit` (the parent's clock)."""
    spec_file = log.with_suffix(".json")
    spec = {**spec, "stamps": str(log.with_suffix(".stamps.json"))}
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += [str(Path(__file__).resolve()), "--child", kind, "--spec", str(spec_file)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launch = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and the workers it joined
    if rc:
        raise SystemExit(f"{kind} run failed (exit {rc}); its log: {log}\n{log.read_text()[-3000:]}")
    stamps = json.loads(Path(spec["stamps"]).read_text())
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {**stamps, "launch": launch, "exit": end, "cpu": cpu}


def prepare(args, tmp: Path, env: dict) -> tuple[list[Path], dict[str, list[tuple[str, str, Callable]]]]:
    """Photos (copies of the JPEG set) and, per pair, its sides: (label, child kind, out path -> child spec),
    one `ours` side per `--ours-args` then the original; both read the same weights file."""
    sys.path.insert(0, str(REPO / "bench"))
    import throughput  # bench/throughput.py: the JPEG set and the full-size grid-feats checkpoint

    jpegs = throughput.make_image_sets(tmp / "sets")["jpeg"]
    folder = tmp / "images"
    folder.mkdir()
    photos = []
    for k in range(args.images):
        src = jpegs[k % len(jpegs)]
        photos.append(folder / f"{k:05d}_{src.name}")
        photos[-1].write_bytes(src.read_bytes())

    def ours(pair: str, weights: str) -> list[tuple[str, str, Callable]]:
        return [(f"ours `{extra}`" if extra else "ours (CLI defaults)", "ours", lambda out, extra=extra: {"preset": PRESET[pair], "argv": [
            "extract", "--preset", PRESET[pair], "--weights", weights, "--images", str(folder), "--out", out + ".h5",
            "--device", "cpu", *shlex.split(extra)]}) for extra in args.ours_args]

    pairs = {}
    if "gridfeats" in args.pairs:
        weights = str(throughput.gridfeats_x152(tmp / "x152_grid.pth"))
        original = {"grid_feats_vqa": args.grid_feats_vqa, "detectron2": args.detectron2, "weights": weights,
                    "images": [str(p) for p in photos]}
        pairs["gridfeats"] = ours("gridfeats", weights) + [
            (ORIGINAL["gridfeats"], "gridfeats", lambda out, o=original: {**o, "out": out})]
    if "grid8" in args.pairs:
        work = tmp / "xlxmert"
        ckpt = work / "mask_rcnn_ckpt"  # coco_extract_grid_feature.py build_mask_rcnn: its fixed paths
        ckpt.mkdir(parents=True)
        weights = str(ckpt / "detectron_model.pth")
        run_child("build_grid8_weights", {"vmb": args.vmb, "weights": weights,
                                          "config": str(ckpt / "detectron_config.yaml")}, tmp / "build_grid8.log", env)
        split = work / "coco" / "images" / XL_SPLIT_DIR
        split.mkdir(parents=True)
        for p in photos:
            (split / p.name).symlink_to(p)
        original = {"vmb": args.vmb, "xlxmert": args.xlxmert, "workdir": str(work), "cocoroot": str(work / "coco")}
        pairs["grid8"] = ours("grid8", weights) + [(ORIGINAL["grid8"], "grid8", lambda out, o=original: o)]
    return photos, pairs


def clear_outputs(tmp: Path) -> None:
    """Every run starts from nothing: no store to reuse, no feature file to overwrite."""
    for folder in (tmp / "out", tmp / "xlxmert" / "coco" / "features"):
        if folder.exists():
            shutil.rmtree(folder)
    (tmp / "out").mkdir()


def phases(r: dict, n: int) -> dict[str, float]:
    return {"total": r["exit"] - r["launch"], "cpu": r["cpu"], "imports": r["imports"] - r["launch"],
            "startup": r["loaded"] - r["launch"], "build_load": r["loaded"] - r["imports"],
            "per_image": (r["end"] - r["loaded"]) / n}


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({', '.join(f'{x:.2f}' for x in xs)})"


def timed_runs(args, tmp: Path, env: dict, n: int, pairs: dict) -> dict[str, dict[str, list[dict[str, float]]]]:
    """`--repeat` rounds per pair; each round runs every side once, in turn (interleaved), each in a fresh process."""
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for pair, sides in pairs.items():
        results[pair] = {label: [] for label, _, _ in sides}
        for k in range(args.repeat):
            for s, (label, kind, spec) in enumerate(sides):
                clear_outputs(tmp)
                r = run_child(kind, spec(str(tmp / "out" / pair)), tmp / "logs" / f"{pair}_{s}_{k}.log", env)
                results[pair][label].append(phases(r, n))
                print(f"[originals] {pair} {label} run {k}: " + ", ".join(
                    f"{key} {v:.2f}" for key, v in results[pair][label][-1].items())
                    + f"; load average after {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        if args.profile:  # one more run of each side under cProfile (not in the table)
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            for s, (label, kind, spec) in enumerate(sides):
                clear_outputs(tmp)
                run_child(kind, spec(str(tmp / "out" / pair)), tmp / "logs" / f"{pair}_{s}_prof.log", env,
                          profile=Path(args.profile) / f"{pair}_{s}_{kind}.prof")
    return results


def print_tables(args, n: int, results: dict) -> None:
    print(f"\n{n} photos (640x480 / 480x640 quality-90 JPEGs), {args.repeat} interleaved rounds, a fresh process per "
          f"run, {os.cpu_count()} CPU cores; ours: `visfeat extract --device cpu` plus the arguments shown\n")
    print("| preset | original | images | ours | s/img ours: median (runs) | s/img original: median (runs) | "
          "ratio | core-s/img ours | core-s/img original | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pair, sides in results.items():
        orig = [x["total"] / n for x in sides[ORIGINAL[pair]]]
        orig_cpu = [x["cpu"] / n for x in sides[ORIGINAL[pair]]]
        for label, runs in sides.items():
            if label != ORIGINAL[pair]:
                ours, ours_cpu = [x["total"] / n for x in runs], [x["cpu"] / n for x in runs]
                print(f"| {PRESET[pair]} | {ORIGINAL[pair]} | {n} | {label[5:]} | {fmt(ours)} | {fmt(orig)} | "
                      f"{statistics.median(ours) / statistics.median(orig):.2f} | {fmt(ours_cpu)} | {fmt(orig_cpu)} | "
                      f"{statistics.median(ours_cpu) / statistics.median(orig_cpu):.2f} |")
    print("\nSeconds, median of the runs: start-up = launch to weights loaded (imports, then model build + weight "
          "read/load); per image = weights loaded to end, / images:\n")
    print("| preset | side | start-up | imports | build + load | per image | total |")
    print("|---|---|---|---|---|---|---|")
    for pair, sides in results.items():
        for label, runs in sides.items():
            med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            print(f"| {PRESET[pair]} | {label} | {med['startup']:.2f} | {med['imports']:.2f} | "
                  f"{med['build_load']:.2f} | {med['per_image']:.2f} | {med['total']:.2f} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--grid-feats-vqa", help="clone of facebookresearch/grid-feats-vqa")
    p.add_argument("--detectron2", help="clone of facebookresearch/detectron2 (the commit grid-feats-vqa pins)")
    p.add_argument("--xlxmert", help="clone of allenai/x-lxmert")
    p.add_argument("--vmb", help="clone of vqa-maskrcnn-benchmark (the fork X-LXMERT uses)")
    p.add_argument("--extra-site", help="folder with the originals' extra packages (fvcore, iopath, yacs, opencv)")
    p.add_argument("--pairs", default="gridfeats,grid8")
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ours-args", action="append", help="`visfeat extract` arguments of one ours side; repeat for "
                   "more sides (default: --workers 0 --batch-size 1)")
    p.add_argument("--profile", help="folder: one more run of each side under cProfile, .prof files there")
    p.add_argument("--keep", help="folder to work in and keep (default: a temporary one)")
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        spec["_t"] = {}
        try:
            CHILDREN[args.child](spec)
        finally:
            if "stamps" in spec:
                _write(spec)
        return
    args.ours_args = args.ours_args or ["--workers 0 --batch-size 1"]
    args.pairs = args.pairs.split(",")
    need = {"gridfeats": ("grid_feats_vqa", "detectron2"), "grid8": ("xlxmert", "vmb")}
    for pair in args.pairs:
        if pair not in need:
            p.error(f"unknown pair {pair!r}; pairs: {', '.join(need)}")
        for name in need[pair]:
            if not getattr(args, name):
                p.error(f"pair {pair} needs --{name.replace('_', '-')}")
    env = child_env(args.extra_site)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep or scratch)
        (tmp / "logs").mkdir(parents=True, exist_ok=True)
        photos, pairs = prepare(args, tmp, env)
        results = timed_runs(args, tmp, env, len(photos), pairs)
    print_tables(args, len(photos), results)
    print(f"\ncommand: python bench/originals.py {' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}")


if __name__ == "__main__":
    main()
