"""`visfeat export --format embedding-reader` on a store of about 1 GB of `global` vectors: seconds, MB/s (of the
store's vectors read) and peak memory (the export process's max RSS), to a local folder and, where SeaweedFS's
`weed` is installed (requirements.txt), to s3:// on a SeaweedFS server on 127.0.0.1 (tests/helpers/s3.py).

    python bench/export.py [--images 200000] [--dim 1280] [--part-rows 1000000] [--dir DIR]

The store is synthetic (random float32 `global`, as a CLIP/effnet store holds), written once; each export runs in
its own process so its peak RSS is its own. A third row exports the same store with `--manifest`: its images are
samples of img2dataset-like tars of 10,000 samples (a 1 KB image member, a caption .txt and a .json with the url),
so the row's extra time is the tar scan and join that give each image its caption and url. Figures go to
bench/README.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from visfeat.store.format import FieldSpec  # noqa: E402
from visfeat.store.writer import writing  # noqa: E402

RUN = """
import json, resource, sys, time
from visfeat.cli import main
t = time.perf_counter()
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "s": time.perf_counter() - t,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


TAR_SAMPLES = 10_000  # img2dataset's default samples per tar (number_sample_per_shard)


def make_store(path: Path, n: int, dim: int) -> int:
    """`n` images of random `global` (dim,) float32, written in blocks; returns the vectors' bytes. Image k is
    sample `{k:09d}` of tar `{k // TAR_SAMPLES:05d}.tar`, as in a webdataset source's store."""
    rng = np.random.default_rng(0)
    block = 10_000
    with writing(path, [FieldSpec("global", (dim,))], {"preset": "bench", "config": "{}"}) as w:
        for a in range(0, n, block):
            b = min(n, a + block)
            w.append([f"{k:09d}" for k in range(a, b)], [f"{k // TAR_SAMPLES:05d}.tar/{k:09d}.jpg" for k in range(a, b)],
                     np.full((b - a, 2), 224, np.int32), {"global": rng.normal(size=(b - a, dim)).astype(np.float32)},
                     {})
    return n * dim * 4


def make_tars(root: Path, n: int) -> Path:
    """The store's images as img2dataset tars under root/tars, and their manifest (`visfeat manifest`)."""
    (root / "tars").mkdir(parents=True)
    image = bytes(1000)  # the scan reads members' headers and the text members, not the image bytes
    for t in range(-(-n // TAR_SAMPLES)):
        with tarfile.open(root / "tars" / f"{t:05d}.tar", "w") as f:
            for k in range(t * TAR_SAMPLES, min(n, (t + 1) * TAR_SAMPLES)):
                meta = json.dumps({"url": f"https://example.com/{k}.jpg", "key": f"{k:09d}"}).encode()
                for ext, data in (("jpg", image), ("txt", f"a photo number {k}".encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{k:09d}.{ext}")
                    info.size = len(data)
                    f.addfile(info, io.BytesIO(data))
    manifest = root / "manifest.parquet"
    p = subprocess.run([sys.executable, "-m", "visfeat", "manifest", "--source", "webdataset", "--root",
                        str(root / "tars"), "--tars", str(root / "tars"), "--out", str(manifest)],
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return manifest


def export(store: Path, out: str, part_rows: int, env: dict | None = None, extra: tuple[str, ...] = ()) -> dict:
    p = subprocess.run([sys.executable, "-c", RUN, "export", "--format", "embedding-reader", "--part-rows",
                        str(part_rows), *extra, str(store), out], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--part-rows", type=int, default=10**6)
    ap.add_argument("--dir")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        nbytes = make_store(tmp / "store.h5", a.images, a.dim)
        mb = nbytes / 1e6
        print(f"store: {a.images} x {a.dim} float32 global = {mb:.0f} MB ({time.perf_counter() - t:.1f} s to write)")
        rows = [("local", export(tmp / "store.h5", str(tmp / "out"), a.part_rows))]
        manifest = make_tars(tmp, a.images)
        rows.append(("local, --manifest (captions)",
                     export(tmp / "store.h5", str(tmp / "out"), a.part_rows, extra=("--manifest", str(manifest)))))
        from helpers.s3 import S3Server, make_bucket, weed_binary

        if weed_binary():
            with S3Server(tmp / "s3") as server:
                make_bucket(server, "bench")
                rows.append(("s3 (SeaweedFS, 127.0.0.1)",
                             export(tmp / "store.h5", "s3://bench/out", a.part_rows, server.env())))
        print(f"{'destination':28s} {'seconds':>8s} {'MB/s':>7s} {'peak RSS MB':>12s}")
        for name, r in rows:
            print(f"{name:28s} {r['s']:8.1f} {mb / r['s']:7.0f} {r['rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
