"""k-means memory and time: training on a store larger than the training-sample bound.

Prints the peak RSS of `visfeat.analysis.kmeans.train` (streams the store, keeps a seeded sample of at most
--max-train-vectors), the peak RSS of loading the whole field the way X-LXMERT's run_kmeans.py does, and the
ratio of our train time to faiss.Kmeans on the same in-memory sample, each measured in a fresh process in the
same run.

    python bench/kmeans_memory.py [--images 4000] [--dim 512] [--k 256] [--max-train-vectors 40000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
mode, store, k, bound, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
t = time.time()
if mode == "visfeat":
    from visfeat.analysis.kmeans import train
    r = train([store], out, field="grid", k=k, niter=10, seed=1, max_train_vectors=bound)
    res = {"seconds_total": time.time() - t, "seconds_train": r["seconds_train"], "n": r["vectors_trained"]}
elif mode == "faiss":
    import faiss
    from visfeat.analysis.kmeans import sample_vectors
    x = sample_vectors([store], "grid", bound, seed=1)          # the same sample, in memory
    t = time.time()
    km = faiss.Kmeans(x.shape[1], k, niter=10, seed=1, max_points_per_centroid=-(-len(x) // k))
    km.train(x)
    res = {"seconds_train": time.time() - t, "n": len(x)}
else:  # load_all: the X-LXMERT way, every vector in RAM
    import h5py
    with h5py.File(store) as f:
        x = f["grid"][()].reshape(-1, f["grid"].shape[-1])
    res = {"seconds_total": time.time() - t, "n": len(x)}
res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(res))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--max-train-vectors", type=int, default=40000)
    a = ap.parse_args()

    import numpy as np

    from visfeat.store.format import FieldSpec
    from visfeat.store.writer import StoreWriter

    tmp = Path(tempfile.mkdtemp(prefix="visfeat-kmeans-bench-"))
    store = tmp / "grid.h5"
    w = StoreWriter(store, [FieldSpec("grid", (8, 8, a.dim))], {"preset": "bench", "extractor": "bench", "config": "{}"})
    rng = np.random.default_rng(0)
    for s in range(0, a.images, 500):
        n = min(500, a.images - s)
        ids = [f"{i}" for i in range(s, s + n)]
        w.append(ids, ids, np.tile([[8, 8]], (n, 1)), {"grid": rng.normal(size=(n, 8, 8, a.dim)).astype(np.float32)})
    w.close()
    size_mb = store.stat().st_size / 1e6
    runs = {}
    for mode in ("visfeat", "faiss", "load_all"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode, str(store), str(a.k), str(a.max_train_vectors),
                              str(tmp / f"{mode}.h5")], capture_output=True, text=True, check=True)
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    v, f, l = runs["visfeat"], runs["faiss"], runs["load_all"]
    sample_mb = a.max_train_vectors * a.dim * 4 / 1e6
    print(f"k-means benchmark: store {size_mb:.0f} MB ({a.images * 64} vectors x {a.dim}), k={a.k}, 10 iterations, "
          f"sample bound {a.max_train_vectors} vectors ({sample_mb:.0f} MB)")
    print(f"  visfeat train peak RSS          : {v['peak_rss_mb']:8.0f} MB  (total {v['seconds_total']:.1f} s)")
    print(f"  load everything (X-LXMERT) RSS  : {l['peak_rss_mb']:8.0f} MB")
    print(f"  faiss.Kmeans on the same sample : {f['seconds_train']:8.2f} s train, peak RSS {f['peak_rss_mb']:.0f} MB")
    print(f"  visfeat train time / faiss      : {v['seconds_train'] / f['seconds_train']:8.2f}")


if __name__ == "__main__":
    main()
