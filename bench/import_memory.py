"""Importing a published feature file keeps memory bounded: peak RSS of `visfeat import` on a multi-GB LXMERT
obj36 TSV vs reading it whole the way LXMERT's `load_obj_tsv` does, each in a fresh process, same run.

    python bench/import_memory.py [--images 4000] [--boxes 36] [--dim 2048]

Writes a random region store, exports it as an LXMERT TSV (the published layout), then measures.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
mode, src, out = sys.argv[1:4]
t = time.time()
if mode == "import":
    from visfeat.interop.importers import import_features
    n = import_features("lxmert-tsv", src, out)
else:  # LXMERT src/utils.py load_obj_tsv: every image's arrays decoded and kept in a list
    import base64, csv
    import numpy as np
    from visfeat.interop.exporters import TSV_FIELDS
    csv.field_size_limit(sys.maxsize)
    data = []
    with open(src) as f:
        for item in csv.DictReader(f, TSV_FIELDS, delimiter="\t"):
            k = int(item["num_boxes"])
            for key, shape, dt in (("boxes", (k, 4), np.float32), ("features", (k, -1), np.float32),
                                   ("objects_id", (k,), np.int64), ("objects_conf", (k,), np.float32),
                                   ("attrs_id", (k,), np.int64), ("attrs_conf", (k,), np.float32)):
                item[key] = np.frombuffer(base64.b64decode(item[key]), dtype=dt).reshape(shape)
            data.append(item)
    n = len(data)
print(json.dumps({"images": n, "seconds": time.time() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    import json

    from visfeat.interop.exporters import export
    from visfeat.store.format import FieldSpec
    from visfeat.store.writer import writing

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--boxes", type=int, default=36)
    ap.add_argument("--dim", type=int, default=2048)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        specs = [FieldSpec("features", (a.dim,), ragged="regions"), FieldSpec("boxes", (4,), ragged="regions"),
                 FieldSpec("obj_id", (), "int64", ragged="regions"), FieldSpec("obj_conf", (), ragged="regions")]
        t = time.time()
        with writing(tmp / "src.h5", specs, {"preset": "butd-r101-36", "config": "{}"}) as w:
            for c in range(0, a.images, 200):
                n = min(200, a.images - c)
                k = n * a.boxes
                counts = np.full(n, a.boxes, np.int64)
                w.append([f"img{c + i}" for i in range(n)], [""] * n, np.full((n, 2), 480, np.int32),
                         {"features": rng.standard_normal((k, a.dim), dtype=np.float32),
                          "boxes": rng.uniform(0, 400, (k, 4)).astype(np.float32),
                          "obj_id": rng.integers(0, 1600, k), "obj_conf": rng.uniform(size=k).astype(np.float32)},
                         {"regions": counts})
        export("lxmert-tsv", str(tmp / "src.h5"), str(tmp / "pub.tsv"))
        size = (tmp / "pub.tsv").stat().st_size
        print(f"LXMERT TSV: {a.images} images x {a.boxes} boxes x {a.dim} = {size / 1e9:.2f} GB "
              f"(made in {time.time() - t:.0f} s)")
        res = {}
        for mode in ("import", "load_all"):
            p = subprocess.run([sys.executable, "-c", CHILD, mode, str(tmp / "pub.tsv"), str(tmp / "out.h5")],
                               check=True, capture_output=True, text=True)
            res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"  {mode:9s} peak RSS {res[mode]['peak_rss_mb']:8.0f} MB   {res[mode]['seconds']:6.1f} s")
        print(f"  import / load_all: peak RSS {res['import']['peak_rss_mb'] / res['load_all']['peak_rss_mb']:.2f}, "
              f"time {res['import']['seconds'] / res['load_all']['seconds']:.2f}")


if __name__ == "__main__":
    main()
