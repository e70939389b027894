"""`FeatureStore.find` (one lookup, what `visfeat show` does) against building the id index, on a synthetic store
of N ids (default 1,000,000), the id looked up being the last: seconds and the process's peak RSS, each in its own
process, alternated and repeated; prints the medians and their ratio.

    python bench/find.py [--images 1000000] [--repeats 3] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from visfeat.store.format import FieldSpec  # noqa: E402
from visfeat.store.writer import writing  # noqa: E402

RUN = """
import json, resource, sys, time
import visfeat
s = visfeat.open(sys.argv[1])
t = time.perf_counter()
i = s.find(sys.argv[2]) if sys.argv[3] == "find" else s.index[sys.argv[2]]
print(json.dumps({"s": time.perf_counter() - t, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "row": i}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        path = Path(tmp) / "ids.h5"
        block = 100_000
        with writing(path, [FieldSpec("global", (1,))], {"preset": "bench", "config": "{}"}) as w:
            for s in range(0, a.images, block):
                ids = [f"{k:012d}" for k in range(s, min(a.images, s + block))]
                w.append(ids, [f"photos/{i}.jpg" for i in ids], np.zeros((len(ids), 2), np.int32),
                         {"global": np.zeros((len(ids), 1), np.float32)}, {})
        last = f"{a.images - 1:012d}"
        runs: dict[str, list[dict]] = {"find": [], "index": []}
        for _ in range(a.repeats):
            for mode in runs:
                p = subprocess.run([sys.executable, "-c", RUN, str(path), last, mode], capture_output=True, text=True,
                                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
                runs[mode].append(json.loads(p.stdout))
        med = {m: (statistics.median(r["s"] for r in rs), statistics.median(r["rss_mb"] for r in rs))
               for m, rs in runs.items()}
        print(f"{a.images} ids, last one looked up, median of {a.repeats} (alternated):")
        for m, (s, rss) in med.items():
            print(f"  {m:6s} {s:6.2f} s  peak RSS {rss:5.0f} MB")
        print(f"  find / index time: {med['find'][0] / med['index'][0]:.2f}")


if __name__ == "__main__":
    main()
