"""The same extraction run (`snakemake all_features`: manifest, one extract job per tar, merge) with the tars and
every output on local disk and then in S3 (Snakemake's S3 storage plugin, a local SeaweedFS server from
tests/helpers/s3.py), alternated and repeated: wall seconds of each run, the extract jobs' own extraction seconds
(their stats files), and the S3 run's extra seconds per shard job. Loopback, so the S3 side is client + protocol
cost; add tar size / bandwidth for a real link.

    python bench/s3_job.py [--tars 2] [--images 200] [--repeats 2] [--dir DIR]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]


def make_tars(sample: Path, tars: int, images: int) -> dict[str, bytes]:
    """`tars` img2dataset-like tars of `images` 640x480 JPEGs each (the sample photos, cycled)."""
    from PIL import Image

    photos = [Image.open(p).convert("RGB").resize((640, 480)) for p in sorted(sample.iterdir())
              if p.suffix in (".png", ".jpg")]
    out = {}
    for t in range(tars):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as f:
            for k in range(images):
                b = io.BytesIO()
                photos[(t * images + k) % len(photos)].save(b, "JPEG", quality=90)
                info = tarfile.TarInfo(f"{t:05d}{k:04d}.jpg")
                info.size = len(b.getvalue())
                f.addfile(info, io.BytesIO(b.getvalue()))
        out[f"{t:05d}.tar"] = buf.getvalue()
    return out


def run(wd: Path, path: str, tars: int, extra: list[str], env: dict) -> float:
    """A fresh copy of the workflow on `path`, `snakemake all_features` in it: wall seconds."""
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    for name in ("Snakefile", "workflow", "envs", "profiles", "src", "config"):
        src = ROOT / name
        (shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy2(src, wd / name))
    import yaml

    (wd / "config/config.yaml").write_text(yaml.safe_dump({
        "datasets": {"cc": {"source": "webdataset", "path": path}},
        "extractors": {"effnet-lite0": {"workers": 1}},
        "features": [{"datasets": ["cc"], "extractors": ["effnet-lite0"]}]}))
    t = time.perf_counter()
    p = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--cores", "2",
                        "results/cc/effnet-lite0.h5", *extra], cwd=wd, capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env})
    if p.returncode:
        raise SystemExit(p.stderr[-4000:])
    return time.perf_counter() - t


def main() -> None:
    from helpers.s3 import S3Server, list_keys, make_bucket

    from visfeat.sources.sample import install_sample

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tars", type=int, default=2)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dir")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        d = Path(d)
        install_sample(d / "sample")
        tars = make_tars(d / "sample", a.tars, a.images)
        (d / "tars").mkdir()
        for name, data in tars.items():
            (d / "tars" / name).write_bytes(data)
        mb = sum(map(len, tars.values())) / 1e6
        pattern = f"{{00000..{a.tars - 1:05d}}}.tar"
        walls: dict[str, list[float]] = {"local": [], "s3": []}
        inside: dict[str, list[float]] = {"local": [], "s3": []}
        with S3Server(d / "s3") as server:
            make_bucket(server, "bench")
            c = server.client()
            for name, data in tars.items():
                c.put_object(Bucket="bench", Key=f"cc/{name}", Body=data)
            for r in range(a.repeats):
                walls["local"].append(run(d / "wl", str(d / "tars" / pattern), a.tars, [], {}))
                inside["local"].append(sum(json.loads(f.read_text())["seconds"]
                                           for f in (d / "wl/logs/extract/cc/effnet-lite0").glob("*.stats.json")))
                prefix = f"s3://bench/run{r}"
                walls["s3"].append(run(d / "ws", f"s3://bench/cc/{pattern}", a.tars,
                                       server.storage_args(prefix), server.env()))
                stats = [k for k in list_keys(server, "bench", f"run{r}/logs/extract/") if k.endswith(".stats.json")]
                inside["s3"].append(sum(json.loads(c.get_object(Bucket="bench", Key=k)["Body"].read())["seconds"]
                                        for k in stats))
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"{a.tars} tars x {a.images} 640x480 JPEGs ({mb:.0f} MB), effnet-lite0, --cores 2, "
          f"median of {a.repeats} alternated runs:")
    for k in walls:
        print(f"  {k:5s} run {med[k]:6.1f} s (each: {', '.join(f'{w:.1f}' for w in walls[k])}); extract jobs' "
              f"own extraction {statistics.median(inside[k]):.1f} s in all")
    print(f"  s3 / local run: {med['s3'] / med['local']:.2f}; S3 adds {(med['s3'] - med['local']) / a.tars:.1f} s "
          f"per shard job (manifest and merge included)")


if __name__ == "__main__":
    main()
