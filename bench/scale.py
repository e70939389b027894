"""Every workflow step that is not a model forward, on synthetic datasets of 1M, 10M and 100M images cut in
10,000 shards: seconds and peak RSS per step, each step in a process of its own (its peak is its own).

    python bench/scale.py [--sizes 1M,10M] [--shards 10000] [--steps slice,merge_virtual,...] [--dir DIR]
                          [--files 1M] [--tars 10000] [--profile-plan]

Per size N: a manifest of N rows (`write_manifest`: ids and paths only, as the manifest job lists them) and
`--shards` tiny shard stores written directly with the store writer (a (4,) float32 `global` per image, no model
run), then: one job's slice (`read_shard` of the middle shard), `merge` copy and virtual against the manifest,
opening the virtual store and reading 1,000 random rows, the report's figures (`feature_report`, sampling), and
the k-means training sample (`sample_vectors`, 100,000 vectors). Once: the plan (`snakemake -n all_features` of
a folder dataset with `--shards` shards, in a fresh copy of this checkout; `--profile-plan`: cProfile's top
entries), the manifest of a folder of `--files` tiny files, and of `--tars` webdataset tars (listing only: the
tars are empty files, never opened). Copy merge is shown beside `cp` of the shard folder (MB/s of shard bytes).
Seconds are the step's own (its process's imports excluded: `with start s` includes them); peak RSS is VmHWM of
the step's process (or of the command it runs). Everything is deleted at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

PER_SIZE = ("slice", "merge_copy", "cp", "merge_virtual", "open_read", "report", "kmeans_sample")
ONCE = ("plan", "manifest_folder", "manifest_tars")
PER_JOB = ("slice",)  # steps one extraction job runs: their cost should not grow with N
RANDOM_ROWS = 1000
KMEANS_SAMPLE = 100_000


def count(text: str) -> int:
    """1M -> 1000000, 10k -> 10000."""
    mult = {"k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9}.get(text[-1:], 1)
    return int(float(text[:-1] if text[-1:] in "kMG" else text) * mult)


def ids_of(n: int, shards: int) -> list[str]:
    """N synthetic image ids (and paths: `{id}.jpg`), as a folder listing gives them."""
    return [f"d{i // 1000:06d}/{i:09d}" for i in range(n)]


def make_dataset(folder: Path, n: int, shards: int) -> None:
    """manifest.parquet of n rows cut in `shards`, and one tiny store per shard holding exactly its rows."""
    import pyarrow as pa

    from visfeat.sources.manifest import write_manifest

    ids = ids_of(n, shards)
    table = pa.table({"image_id": pa.array(ids), "path": pa.array([f"{i}.jpg" for i in ids])})
    del ids
    write_manifest(table, folder / "manifest.parquet", shards)
    del table
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as ex:
        list(ex.map(_write_stores, [(str(folder), k, shards) for k in range(0, shards, 100)]))


def _write_stores(job: tuple[str, int, int]) -> None:
    from visfeat.sources.manifest import read_shard
    from visfeat.store.format import FieldSpec
    from visfeat.store.writer import StoreWriter

    folder, first, shards = job
    for k in range(first, min(shards, first + 100)):
        ids = list(read_shard(f"{folder}/manifest.parquet", k)["image_id"])
        w = StoreWriter(f"{folder}/shards/{k}.h5", [FieldSpec("global", (4,))],
                        {"preset": "bench", "extractor": "bench", "config": "{}", "weights_sha256": ""})
        rng = np.random.default_rng(k)
        w.append(ids, [f"{i}.jpg" for i in ids], np.full((len(ids), 2), 8),
                 {"global": rng.normal(size=(len(ids), 4)).astype(np.float32)})
        w.close()


def run_step(step: str, folder: Path, shards: int, extra: dict) -> dict:
    """The step, in this (child) process; returns what it measured besides time and memory."""
    if step == "slice":
        from visfeat.sources.manifest import read_shard

        return {"rows": len(read_shard(folder / "manifest.parquet", shards // 2))}
    if step in ("merge_copy", "merge_virtual"):
        from visfeat.cli import main

        out = folder / f"{step}.h5"
        main(["merge", "--manifest", str(folder / "manifest.parquet"), "--shard-dir", str(folder / "shards"),
              "--shards", str(shards), "--mode", step.split("_")[1], "--out", str(out)])
        return {"MB out": round(os.path.getsize(out) / 1e6, 1)}
    if step == "cp":
        rc, out, peak = spawned(["cp", "-r", str(folder / "shards"), str(folder / "shards_cp")])
        shutil.rmtree(folder / "shards_cp")
        return {"rc": rc, "MB in": round(sum(f.stat().st_size for f in (folder / "shards").iterdir()) / 1e6),
                "spawned peak MB": round(peak)}
    if step == "open_read":
        from visfeat.store.reader import FeatureStore

        s = FeatureStore(folder / "merge_virtual.h5")
        for i in np.random.default_rng(0).integers(0, len(s), RANDOM_ROWS):
            s.row(int(i))
        return {"rows": RANDOM_ROWS}
    if step == "report":
        from visfeat.analysis.report import feature_report

        feature_report(str(folder / "merge_virtual.h5"), str(folder / "report"), weights_root=str(folder))
        return {}
    if step == "kmeans_sample":
        from visfeat.analysis.kmeans import sample_vectors

        return {"vectors": len(sample_vectors([str(folder / "merge_virtual.h5")], "global", KMEANS_SAMPLE, 0))}
    if step == "plan":
        return plan(shards, extra.get("profile", False))
    if step == "manifest_folder":
        root = folder / "files"
        return _cli_manifest(["--source", "folder", "--root", str(root), "--shards", str(shards)], folder)
    if step == "manifest_tars":
        return _cli_manifest(["--source", "webdataset", "--root", str(folder / "tars"), "--tars",
                              str(folder / "tars")], folder)
    raise SystemExit(f"unknown step {step}")


def _cli_manifest(args: list[str], folder: Path) -> dict:
    from visfeat.cli import main

    out = folder / "m.parquet"
    rc = main(["manifest", *args, "--out", str(out)])
    import pyarrow.parquet as pq

    return {"rc": rc, "rows": pq.ParquetFile(out).metadata.num_rows}


def plan(shards: int, profile: bool) -> dict:
    """`snakemake -n all_features` of a folder dataset with `shards` shards, in a copy of this checkout."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        for name in ("Snakefile", "workflow", "envs", "profiles", "config"):
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, wd / name)
        (wd / "photos").mkdir()
        (wd / "photos/0.jpg").write_bytes(b"")
        cfg = {"datasets": {"many": {"source": "folder", "path": str(wd / "photos"), "shards": shards}},
               "extractors": {"effnet-lite0": {}},
               "features": [{"datasets": ["many"], "extractors": ["effnet-lite0"]}]}
        (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
        exe = str(Path(sys.executable).with_name("snakemake"))
        cmd = [sys.executable, "-m", "cProfile", "-o", str(wd / "plan.prof"), exe] if profile else [exe]
        rc, text, peak = spawned([*cmd, "-n", "all_features"], cwd=wd)
        jobs = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("total")), -1)
        out = {"jobs": jobs, "rc": rc, "spawned peak MB": round(peak)}
        if profile:
            import io
            import pstats

            buf = io.StringIO()
            pstats.Stats(str(wd / "plan.prof"), stream=buf).sort_stats("tottime").print_stats(12)
            out["profile"] = buf.getvalue()
        return out


def peak_mb() -> float:
    """This process's peak RSS: VmHWM, since its exec (getrusage's maxrss would carry its parent's)."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024


def spawned(cmd: list[str], **kw) -> tuple[int, str, float]:
    """A command's exit status, output, and its own peak RSS in MB (wait4 of it: snakemake, cp)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, out, usage.ru_maxrss / 1024


def measured(step: str, folder: Path, shards: int, extra: dict) -> tuple[float, float, dict]:
    """(seconds, peak RSS MB, what the step reports) of the step run in a child process: the seconds of the step
    itself (imports done), the peak of the process or of the command it runs (snakemake, cp), the larger."""
    args = [sys.executable, __file__, "--child", step, "--dir", str(folder), "--shards", str(shards),
            "--extra", json.dumps(extra)]
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    p.wait()
    took = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"step {step} failed ({p.returncode}): {out[-2000:]}")
    info = json.loads(out.strip().splitlines()[-1])
    info["with start s"] = round(took, 2)  # the process's wall time: Python's start and the imports too
    return info.pop("seconds"), info.pop("peak"), info


def make_files(root: Path, n: int) -> None:
    """n empty files in folders of 1,000 (the manifest job lists; it opens none)."""
    for i in range(n):
        if i % 1000 == 0:
            d = root / f"d{i // 1000:06d}"
            d.mkdir(parents=True)
        (d / f"{i:09d}.jpg").touch()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1M,10M,100M")
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--steps", default=",".join(ONCE + PER_SIZE))
    ap.add_argument("--files", default="1M", help="files in the folder the folder manifest lists")
    ap.add_argument("--tars", type=int, default=10_000)
    ap.add_argument("--dir", help="a folder on disk for the data (default: a temporary one, deleted)")
    ap.add_argument("--profile-plan", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--extra", default="{}")
    a = ap.parse_args()
    if a.child:
        t = time.perf_counter()
        info = run_step(a.child, Path(a.dir), a.shards, json.loads(a.extra))
        took, peak = time.perf_counter() - t, max(peak_mb(), info.get("spawned peak MB", 0))
        print(json.dumps({**info, "seconds": took, "peak": peak}, default=str))
        return
    steps = a.steps.split(",")
    base = Path(tempfile.mkdtemp(prefix="visfeat-scale-", dir=a.dir))
    rows: list[tuple[str, str, float, float, dict]] = []

    def record(n: str, step: str, folder: Path, extra: dict | None = None) -> None:
        took, rss, info = measured(step, folder, a.shards, extra or {})
        prof = info.pop("profile", None)
        rows.append((n, step, took, rss, info))
        print(f"{n:>6} {step:<16} {took:9.2f} s {rss:9.1f} MB  {info}", flush=True)
        if prof:
            print(prof)

    try:
        once = base / "once"
        once.mkdir()
        if "plan" in steps:
            record("-", "plan", once, {"profile": a.profile_plan})
        if "manifest_folder" in steps:
            make_files(once / "files", count(a.files))
            record(a.files, "manifest_folder", once)
            shutil.rmtree(once / "files")
        if "manifest_tars" in steps:
            (once / "tars").mkdir()
            for k in range(a.tars):
                (once / "tars" / f"{k:05d}.tar").touch()
            record(str(a.tars), "manifest_tars", once)
        for size in a.sizes.split(","):
            if not set(steps) & set(PER_SIZE):
                break
            folder = base / size
            folder.mkdir()
            t = time.perf_counter()
            make_dataset(folder, count(size), a.shards)
            print(f"{size:>6} (made dataset: {time.perf_counter() - t:.1f} s, shard stores "
                  f"{sum(f.stat().st_size for f in (folder / 'shards').iterdir()) / 1e6:.0f} MB)", flush=True)
            for step in PER_SIZE:
                if step in steps:
                    record(size, step, folder)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\n| N | step | seconds | peak RSS MB | |\n|---|---|---|---|---|")
    for n, step, took, rss, info in rows:
        print(f"| {n} | {step} | {took:.2f} | {rss:.0f} | {', '.join(f'{k} {v}' for k, v in info.items())} |")
    sizes = a.sizes.split(",")
    for step in PER_JOB:
        got = {n: (t, r) for n, s, t, r, _ in rows if s == step}
        if sizes[0] in got and sizes[-1] in got and sizes[0] != sizes[-1]:
            (t0, r0), (t1, r1) = got[sizes[0]], got[sizes[-1]]
            print(f"{step}: {sizes[-1]} / {sizes[0]}: time {t1 / t0:.2f}, peak RSS {r1 / r0:.2f}")
    for n in sizes:
        got = {s: t for m, s, t, _, _ in rows if m == n}
        if "merge_copy" in got and "cp" in got:
            print(f"{n}: merge copy at {got['cp'] / got['merge_copy']:.2f} of cp's MB/s")


if __name__ == "__main__":
    main()
