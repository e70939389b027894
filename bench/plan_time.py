"""How long Snakemake takes to plan a dataset of many shards, and how many jobs it plans: `snakemake -n
all_features` on a folder dataset of a few images with `shards: N`, in a fresh copy of a workflow checkout.

    python bench/plan_time.py [--workflow DIR] [--shards 100 1000 10000]

--workflow: the checkout to copy (default: this one), so an older commit can be measured beside this one.
"""
from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def plan(workflow: Path, shards: int, images: int = 4) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, planned jobs) of one dry run. CPU seconds are the figure to compare on a shared
    machine: the wall clock also counts the time other processes hold the cores."""
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        for name in ("Snakefile", "workflow", "envs", "profiles", "src", "config"):
            src = workflow / name
            if src.is_dir():
                shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            elif src.exists():
                shutil.copy2(src, wd / name)
        photos = wd / "photos"
        photos.mkdir()
        from PIL import Image

        for i in range(images):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(photos / f"{i}.png")
        cfg = {"datasets": {"many": {"source": "folder", "path": str(photos), "shards": shards}},
               "extractors": {"effnet-lite0": {}},
               "features": [{"datasets": ["many"], "extractors": ["effnet-lite0"]}]}
        (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
        exe = Path(sys.executable).with_name("snakemake")
        t, r = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run([str(exe), "-n", "all_features"], cwd=wd, capture_output=True, text=True, check=True)
        took, r2 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r2.ru_utime - r.ru_utime) + (r2.ru_stime - r.ru_stime)
        m = re.search(r"^total\s+(\d+)", p.stdout + p.stderr, re.M)
        return took, cpu, int(m.group(1)) if m else -1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workflow", type=Path, default=REPO)
    ap.add_argument("--shards", type=int, nargs="+", default=[100, 1000, 10000])
    a = ap.parse_args()
    print("| shards | planned jobs | `snakemake -n all_features` wall s | CPU s |\n|---|---|---|---|")
    for n in a.shards:
        took, cpu, jobs = plan(a.workflow.resolve(), n)
        print(f"| {n:,} | {jobs:,} | {took:.1f} | {cpu:.1f} |", flush=True)


if __name__ == "__main__":
    main()
