"""`merge: copy` vs `merge: virtual` over many small shards: merge seconds and bytes written, next to `cp` of the
bytes a copy merge writes, and random-access read speed (rows/s, random order, through `FeatureStore.row` as
`visfeat.dataset` reads) and streaming speed (`iter_rows`, as exporters and k-means read) of both merged stores.

    python bench/merge.py [--shards 1000] [--images 10] [--dim 2048] [--box-dim 0] [--repeats 3] [--dir DIR]

Shards are synthetic stores with the layout of a region preset: `global` (dim,) float32 per image plus ragged
regions of 10..36 boxes each (`boxes` (K, 4), `obj_id` (K,), and `features` (K, box-dim) when box-dim > 0).
Everything runs from the page cache (the shard files were just written): the figures compare work, not disks.
Each timing is the median of `--repeats` runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from visfeat.store.format import FieldSpec  # noqa: E402
from visfeat.store.merge import (
    merge,  # noqa: E402
    merge_virtual,  # noqa: E402
)
from visfeat.store.reader import FeatureStore, iter_rows
from visfeat.store.writer import StoreWriter


def write_shards(folder: Path, shards: int, images: int, dim: int, box_dim: int) -> tuple[list[Path], int]:
    specs = [FieldSpec("global", (dim,)), FieldSpec("boxes", (4,), ragged="regions"),
             FieldSpec("obj_id", (), "int64", "regions")]
    if box_dim:
        specs.append(FieldSpec("features", (box_dim,), ragged="regions"))
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        ids = [f"{s:05d}_{i:03d}" for i in range(images)]
        k = rng.integers(10, 37, images)
        values = {"global": rng.normal(size=(images, dim)).astype(np.float32),
                  "boxes": rng.uniform(0, 500, (k.sum(), 4)).astype(np.float32),
                  "obj_id": rng.integers(0, 1600, k.sum())}
        if box_dim:
            values["features"] = rng.normal(size=(k.sum(), box_dim)).astype(np.float32)
        w = StoreWriter(folder / f"{s}.h5", specs,
                        {"preset": "bench", "extractor": "bench", "config": "{}", "weights_sha256": ""})
        w.append(ids, [f"{i}.jpg" for i in ids], np.full((images, 2), 480), values, {"regions": k})
        w.close()
        paths.append(folder / f"{s}.h5")
    return paths, sum(p.stat().st_size for p in paths)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def random_reads(path: Path, n: int, seed: int = 0) -> float:
    """Rows per second reading `n` rows in random order, every field, as `visfeat.dataset` does."""
    s = FeatureStore(path)
    order = np.random.default_rng(seed).permutation(len(s))[:n]
    s.row(int(order[0]))
    t = time.perf_counter()
    for i in order:
        s.row(int(i))
    rate = len(order) / (time.perf_counter() - t)
    s.close()
    return rate


def streamed(path: Path) -> float:
    """Rows per second streaming the whole store in row chunks (`iter_rows`: exporters, k-means)."""
    s = FeatureStore(path)
    t = time.perf_counter()
    n = sum(len(ids) for ids, *_ in iter_rows(s))
    s.close()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--images", type=int, default=10, help="images per shard")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--box-dim", type=int, default=0, help="per-box feature size (0: no per-box features)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reads", type=int, default=5000, help="random rows read per store")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        t = time.perf_counter()
        shards, total = write_shards(tmp / "results/ds/x/shards", a.shards, a.images, a.dim, a.box_dim)
        print(f"{a.shards} shards x {a.images} images (global {a.dim}, 10..36 boxes/image, box features "
              f"{a.box_dim or 'none'}): {total / 1e6:.1f} MB of shards, written in {time.perf_counter() - t:.1f} s")
        copy, virt = tmp / "results/ds/copy.h5", tmp / "results/ds/x.h5"
        t_copy = timed(lambda: merge(shards, copy), a.repeats)
        t_virt = timed(lambda: merge_virtual(shards, virt), a.repeats)

        def cp() -> None:  # the bytes a copy merge writes, copied as one file: the floor for any copying merge
            subprocess.run(["cp", str(copy), str(tmp / "cp.h5")], check=True)

        t_cp = timed(cp, a.repeats)
        r_copy = random_reads(copy, a.reads)
        r_virt = random_reads(virt, a.reads)
        s_copy, s_virt = streamed(copy), streamed(virt)
        print("\n| | merge s | bytes written | random reads, rows/s | streamed, rows/s |\n|---|---|---|---|---|")
        print(f"| `merge: copy` | {t_copy:.2f} | {copy.stat().st_size / 1e6:.1f} MB | {r_copy:.0f} | {s_copy:.0f} |")
        print(f"| `merge: virtual` | {t_virt:.2f} | {virt.stat().st_size / 1e6:.2f} MB | {r_virt:.0f} | {s_virt:.0f} |")
        print(f"| `cp` of the copied store (its bytes) | {t_cp:.2f} | {copy.stat().st_size / 1e6:.1f} MB | | |")
        ratio = virt.stat().st_size / copy.stat().st_size
        print(f"\nmerge copy at {t_cp / t_copy:.2f} of cp's MB/s (the bytes it writes)")
        print(f"virtual/copy: merge time x{t_virt / t_copy:.2f}, bytes x{ratio:.4f}, random reads "
              f"x{r_virt / r_copy:.2f}; rows {a.shards * a.images}, {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
