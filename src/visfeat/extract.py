"""Run one extractor over a list of images into one store, resumably and incrementally.

DataLoader workers decode and preprocess while the model runs. Each finished batch is flushed as its own small
file under `{out}.parts/` (written to a temporary name, then renamed), so a job killed at any instant loses at most
the batch in flight; rerunning with the same arguments skips the flushed items. Batches are fixed runs of
`batch_size` consecutive items, so a resumed run computes exactly the batches an uninterrupted one would and
produces the same file. When all items are done the store is assembled under a temporary name and renamed to
`out`: the finished file appears atomically.

An existing `out` is the previous run's store: exactly up to date (same extractor signature, same images with
the same content) it is left alone; otherwise its rows (and failures) are reused for every image whose id and
file sha256 are unchanged under the same extractor signature, only the rest is extracted, and the store is
assembled anew in item order, so it equals, byte for byte, the store a clean run writes (store.WRITE_BLOCK,
SOURCE_DATE_EPOCH) wherever the model's output does not depend on which images share a batch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import __version__
from .fields import FieldSpec
from .images import ImageError, full_size, load_image, load_tar_member
from .reuse import PreviousStore, extractor_signature, with_hashes
from .store import writing

if TYPE_CHECKING:  # torch is imported only where a model runs: a rerun with nothing to extract never loads it
    from .extractors.base import Extractor

# Hook called with the batch index once that batch's part file is on disk (None: no call, the writer runs
# ahead). Tests set it to pause there, so that a kill lands between two flushed batches.
after_flush: Callable[[int], None] | None = None


@dataclass(frozen=True)
class Item:
    image_id: str
    path: str  # as stored in `image_path`: relative to the dataset root
    abspath: str  # the image file, or the tar holding it
    offset: int = -1  # a tar member: where its data starts in `abspath` (-1: abspath is the image file)
    size: int = -1  # a tar member: its size in bytes
    error: str = ""  # why the manifest already knows this item fails (a sample without an image, a broken tar)
    sha256: str = ""  # hex sha256 of the image's bytes (with_hashes); "" = not known (never reused)


def default_image_id(relpath: str) -> str:
    return os.path.splitext(relpath.replace(os.sep, "/"))[0]


def read_list(list_file: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Item]:
    """Lines `path` or `image_id<TAB>path`; relative paths resolve against `root` (default: the list's folder)."""
    from .datasets import list_lines

    base = Path(root) if root is not None else Path(list_file).parent
    items, seen = [], {}
    for n, image_id, path in list_lines(list_file):
        if image_id is None:
            image_id = default_image_id(path)
        if image_id in seen:
            raise ValueError(f"{list_file}:{n}: image id {image_id!r} repeats line {seen[image_id]}")
        seen[image_id] = n
        abspath = path if os.path.isabs(path) else str(base / path)
        items.append(Item(image_id, path, abspath))
    return items


def manifest_items(manifest: str | os.PathLike, shards: int, index: int, root: str | os.PathLike) -> list[Item]:
    """Shard `index` of `shards` of a manifest.parquet (datasets.shard_of), paths resolved against `root`: the
    items, in the order, that `read_list` gives for the same shard written as a list file (same resume signature)."""
    import pandas as pd

    from .datasets import shard_of

    part = shard_of(pd.read_parquet(manifest), shards, index)
    if "tar" in part.columns:  # webdataset: tar members read in place, in tar order (datasets.scan_webdataset)
        return [Item(i, p, t, int(o), int(n), e) for i, p, t, o, n, e in
                zip(part["image_id"], part["path"], part["tar"], part["offset"], part["bytes"], part["error"])]
    base = Path(root)
    return [Item(i, p, p if os.path.isabs(p) else str(base / p)) for i, p in zip(part["image_id"], part["path"])]


def folder_items(folder: str | os.PathLike) -> list[Item]:
    from .datasets import scan_folder

    return [Item(i, p, str(Path(folder) / p)) for i, p in scan_folder(folder)]


class _Images:
    """Map-style dataset for DataLoader workers: decode + preprocess, or the reason it failed."""

    def __init__(self, items: list[Item], preprocess: Callable, exif: bool, max_pixels: int,
                 needed: Callable | None = None, encoded: bool = False):
        self.items, self.preprocess, self.exif, self.max_pixels = items, preprocess, exif, max_pixels
        self.needed = needed  # `decode: draft`: the preprocessor's needed_size
        self.encoded = encoded  # `decode: gpu`: JPEG bytes, decoded and preprocessed by the main process

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        it = self.items[i]
        try:
            if it.error:
                raise ImageError(it.error)
            if self.encoded:
                from .device_decode import read_sample

                sample, hw = read_sample(it.abspath, it.offset, it.size, self.exif, self.max_pixels)
                return i, sample, hw, None
            if it.offset >= 0:
                img = load_tar_member(it.abspath, it.offset, it.size, apply_exif=self.exif, max_pixels=self.max_pixels,
                                      needed=self.needed)
            else:
                img = load_image(it.abspath, apply_exif=self.exif, max_pixels=self.max_pixels, needed=self.needed)
            w, h = full_size(img)
            hw = (h, w)
            return i, self.preprocess(img), hw, None
        except ImageError as e:
            return i, None, None, str(e)
        except Exception as e:  # a preprocessing bug on one odd image is that image's failure
            return i, None, None, f"preprocess failed: {type(e).__name__}: {e}"


class _Collate:
    """Collates the decoded samples of one batch; a dict batch also gets the images' ids under `image_id`
    (forced-boxes mode looks its boxes up by id)."""

    def __init__(self, collate: Callable, items: list[Item], on_device: Callable | None = None):
        self.collate, self.items = collate, items
        self.on_device = on_device  # `decode: gpu`: device_decode.DevicePreprocess

    def __call__(self, samples):
        if self.on_device is not None:  # decode + preprocess here; a file that fails becomes a failed sample
            todo = [k for k, s in enumerate(samples) if s[3] is None]
            samples = list(samples)
            for k, done in zip(todo, self.on_device([samples[k][1] for k in todo])):
                i, _, hw, _ = samples[k]
                samples[k] = (i, None, None, done) if isinstance(done, str) else (i, done, hw, None)
        ok = [(i, s, hw) for i, s, hw, err in samples if err is None]
        batch = self.collate([s for _, s, _ in ok]) if ok else None
        if isinstance(batch, dict):
            batch["image_id"] = [self.items[i].image_id for i, _, _ in ok]
        return {
            "n_items": len(samples),
            "ok": [i for i, _, _ in ok],
            "hw": [hw for _, _, hw in ok],
            "batch": batch,
            "failed": [(i, err) for i, _, _, err in samples if err is not None],
        }


def aspect_order(items: list[Item], window: int, exif: bool = True) -> list[Item]:
    """Sort each run of `window` items by aspect ratio (w / h, from the headers), so the batches cut from it
    pad little (detectron2 groups by aspect for the same reason). Deterministic: a resumed run gets the same
    order. An unreadable header sorts as square; the image fails later with its reason."""
    from .images import header_size

    def aspect(it: Item) -> float:
        try:
            w, h = header_size(it.abspath, apply_exif=exif)
            return w / max(h, 1)
        except Exception:
            return 1.0

    out: list[Item] = []
    for a in range(0, len(items), window):
        chunk = items[a:a + window]
        out += [it for _, it in sorted(((aspect(it), k), it) for k, it in enumerate(chunk))]
    return out


def _identity(x):
    return x


class _InProcess:
    """`workers: 0`: the main process decodes each batch's images itself, with `threads` threads (PIL's decoder
    and resize release the GIL), between two forwards. On a CPU the decoding and the model then take turns on
    every core instead of competing for them: measured on 2 cores (64 640x480 JPEGs), decode + preprocess took
    3.0 -> 2.0 ms an image for effnet-lite0 and 5.0 -> 2.7 ms for clip-vit-b32 with 2 threads instead of one."""

    def __init__(self, ds: _Images, indices: range, threads: int, chunk: int):
        self.ds, self.indices, self.threads, self.chunk = ds, indices, threads, chunk
        self.cpu: list[float] = []  # each image's decode + preprocess CPU seconds (its thread's time)

    def _timed(self, i: int):
        t = time.thread_time()
        try:
            return self.ds[i]
        finally:
            self.cpu.append(time.thread_time() - t)

    def __iter__(self):
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for a in range(0, len(self.indices), self.chunk):  # one batch at a time: none decodes during a forward
                yield from pool.map(self._timed, self.indices[a:a + self.chunk])


def _group(samples, batch_size: int, collate: "_Collate"):
    """Consecutive samples -> collated batches of `batch_size` (the last one shorter)."""
    buf = []
    for s in samples:
        buf.append(s)
        if len(buf) == batch_size:
            yield collate(buf)
            buf = []
    if buf:
        yield collate(buf)


def _slice(batch: Any, a: int, b: int) -> Any:
    if isinstance(batch, dict):
        return {k: _slice(v, a, b) for k, v in batch.items()}
    return batch[a:b]


class _Forward:
    """Batched forward that halves its sub-batch on CUDA out-of-memory and goes on with the smaller size."""

    def __init__(self, extractor: Extractor, cap: int):
        self.extractor, self.cap = extractor, cap

    def __call__(self, batch: Any, n: int) -> list[dict[str, np.ndarray]]:
        import torch

        out: list[dict[str, np.ndarray]] = []
        a = 0
        while a < n:
            b = min(n, a + self.cap)
            try:
                out.extend(self.extractor.forward(_slice(batch, a, b)))
                a = b
            except torch.cuda.OutOfMemoryError:
                if self.cap == 1:
                    raise
                torch.cuda.empty_cache()
                self.cap = max(1, self.cap // 2)
                print(f"[visfeat] CUDA out of memory: batch size halved to {self.cap}", file=sys.stderr, flush=True)
        return out


def _parts_signature(signature: str, items: list[Item]) -> str:
    """The resume state's identity: the extractor signature and the items to compute, in order, with content."""
    h = hashlib.sha256(signature.encode())
    for it in items:
        h.update(f"{it.image_id}\t{it.path}\t{it.sha256}\n".encode())
    return h.hexdigest()


class _Parts:
    """The resume state of one output: `{out}.parts/` with meta.json and one npz per flushed batch."""

    def __init__(self, out: Path, signature: str):
        self.dir = out.with_name(out.name + ".parts")
        self.signature = signature
        meta = self.dir / "meta.json"
        if self.dir.exists():
            try:
                ok = json.loads(meta.read_text())["signature"] == signature
            except (OSError, ValueError, KeyError):
                ok = False
            if not ok:
                print(f"[visfeat] discarding {self.dir}: it was made with other inputs or options", file=sys.stderr)
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            self._atomic_write(meta, json.dumps({"signature": signature}).encode())
        for stale in self.dir.glob(".tmp-*"):
            stale.unlink(missing_ok=True)

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".tmp-{path.name}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def scan(self) -> tuple[list[Path], int]:
        """The flushed batches and how many items they cover, in one pass. Only a contiguous, loadable run
        b0000000.. counts: a file cut short by a machine crash (no fsync: renames of page-cache data survive a
        killed job, not a lost node), and everything after it or after a gap, is redone."""
        good, items = [], 0
        for k, f in enumerate(sorted(self.dir.glob("b*.npz"))):
            if f.name != f"b{k:07d}.npz":
                break
            try:
                with np.load(f) as z:
                    items += int(z["n_items"])
            except Exception:
                break
            good.append(f)
        return good, items

    def write(self, k: int, arrays: dict[str, np.ndarray]) -> None:
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self._atomic_write(self.dir / f"b{k:07d}.npz", buf.getvalue())

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _pack(specs: list[FieldSpec], items: list[Item], b: dict, outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    ok = b["ok"]
    arrays: dict[str, np.ndarray] = {
        "n_items": np.asarray(b["n_items"]),
        "image_id": np.asarray([items[i].image_id for i in ok], dtype=str),
        "image_path": np.asarray([items[i].path for i in ok], dtype=str),
        "image_hw": np.asarray(b["hw"], np.int32).reshape(-1, 2),
        "failed_id": np.asarray([items[i].image_id for i, _ in b["failed"]], dtype=str),
        "failed_reason": np.asarray([r for _, r in b["failed"]], dtype=str),
    }
    for s in specs:
        if s.ragged:
            arrays[f"field/{s.name}"] = (np.concatenate([o[s.name] for o in outs]) if outs
                                         else np.zeros((0, *s.shape), s.dtype))
            arrays[f"count/{s.ragged}"] = np.asarray([len(o[s.name]) for o in outs], np.int64)
        else:
            arrays[f"field/{s.name}"] = (np.stack([o[s.name] for o in outs]) if outs
                                         else np.zeros((0, *s.shape), s.dtype))
    return arrays


def expected_bytes(specs: list[FieldSpec], n_images: int, storage_dtype: str, rows_per_image: int = 100) -> int:
    per = 0
    for s in specs:
        itemsize = 2 if (storage_dtype == "float16" and np.dtype(s.dtype).kind == "f") else np.dtype(s.dtype).itemsize
        per += int(np.prod(s.shape, dtype=np.int64)) * itemsize * (rows_per_image if s.ragged else 1)
    return per * n_images


class _Progress:
    """tqdm on a terminal; plain lines (every 10 s and at the end) in logs."""

    def __init__(self, total: int, initial: int, desc: str):
        self.total, self.n, self.t0, self.start = total, initial, time.time(), initial
        self.last = 0.0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="img")
        self.desc = desc

    def update(self, k: int) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif time.time() - self.last >= 10 or self.n == self.total:
            self.last = time.time()
            rate = (self.n - self.start) / max(1e-9, time.time() - self.t0)
            print(f"[{self.desc}] {self.n}/{self.total} images ({100 * self.n / max(1, self.total):.1f}%) "
                  f"{rate:.2f} img/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def model_threads(extractor: Extractor, workers: int) -> int:
    """Torch threads for the forward: on the CPU, every core this process may use (its CPU affinity: a SLURM
    job's cpuset), whatever the number of decoding workers. Measured on 2 cores (32 640x480 JPEGs, batch 16):
    taking the workers' cores away from the model is the slowest split (2 workers + 1 thread: effnet-lite0 21.8
    img/s, CLIP ViT-B/32 7.3), sharing them is better (2 + 2: 21.7, 12.4), and decoding in the main process is
    fastest (0 workers + 2 threads: 36.6, 15.2): decoding costs 5-20 ms an image, the forward 30-70 ms, so on a
    CPU the model's threads are worth more than overlap. Elsewhere torch's own setting."""
    import torch

    if extractor.device.type != "cpu":
        return torch.get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_extraction(
    extractor: Extractor | Callable[[], Extractor],
    items: list[Item],
    out: str | os.PathLike,
    batch_size: int = 8,
    workers: int = 2,
    name: str | None = None,
    storage_dtype: str = "float32",
    compression: str | None = None,
    worker_start: str | None = None,
    request: str = "",
) -> dict[str, Any]:
    """Extract `items` into the store `out`, reusing a previous `out`'s rows of unchanged images (module doc);
    resumes from `{out}.parts/`; returns counts and timing. `extractor` may be a function building it: then it is
    built only when something needs the model and the previous store was made by another `request`
    (reuse.request_digest)."""
    out = Path(out)
    t = time.perf_counter()
    items = with_hashes(items)
    t_hash = time.perf_counter() - t
    built = hasattr(extractor, "fields")  # an Extractor, or the function that builds one
    name = name or (extractor.preset if built else None)
    prev = PreviousStore.open(out)
    try:
        ex = extractor if built else None
        if prev is not None and request and prev.request == request:
            sig = prev.signature  # the same request built the same extractor: decide without building it
        else:
            ex = ex or extractor()
            name = name or ex.preset
            sig = extractor_signature(ex, storage_dtype, name)
        if prev is not None and prev.current(items, sig, request, compression):
            print(f"[visfeat] {out} exists and is up to date ({len(items)} images): nothing to do", file=sys.stderr)
            return {"images": None, "skipped": True}
        reused = {it.image_id for it in items if prev is not None and prev.reusable(it, sig)}
        todo = [it for it in items if it.image_id not in reused and not it.error]
        if todo and ex is None:
            ex = extractor()
            name = name or ex.preset
            if extractor_signature(ex, storage_dtype, name) != sig:  # the code changed under the same request
                sig, reused = extractor_signature(ex, storage_dtype, name), set()
                todo = [it for it in items if not it.error]
        if prev is not None:
            print(f"[visfeat] reused {len(reused)} of {len(items)} images from the previous store; extracting "
                  f"{len(items) - len(reused)}", file=sys.stderr, flush=True)
        if ex is not None:
            specs = ex.fields()
            attrs = _attrs(ex.preset, name, json.dumps(ex.config, sort_keys=True), ex.weights_sha256 or "",
                           compression, sig, request)
        else:  # nothing to extract: the previous store says what the extractor is
            from .store import specs_from_json

            pa = prev.attrs
            specs = specs_from_json(pa["fields"])
            attrs = _attrs(pa["preset"], pa["extractor"], pa["config"], pa["weights_sha256"], compression, sig,
                           request)
        out.parent.mkdir(parents=True, exist_ok=True)
        parts = _Parts(out, _parts_signature(sig, todo))
        res = _extract(ex, todo, parts, batch_size, workers, name, storage_dtype, worker_start, out, len(items)) \
            if todo else {"seconds": 0.0, "processed": 0, "timing": {}}
        res["timing"]["hash"] = t_hash
        t = time.perf_counter()
        n_ok, n_failed = _assemble(parts, specs, out, attrs, storage_dtype, compression, items, prev,
                                   reused)
        parts.remove()
        res["timing"]["assemble"] = time.perf_counter() - t
    finally:
        if prev is not None:
            prev.close()
    print(f"[visfeat] done: {n_ok} images, {n_failed} failed, {len(reused)} reused, {res['processed']} processed "
          f"now in {res['seconds']:.1f} s ({res['processed'] / max(res['seconds'], 1e-9):.2f} img/s); seconds: "
          + ", ".join(f"{k} {v:.2f}" for k, v in res["timing"].items()), file=sys.stderr, flush=True)
    return {"images": n_ok, "failed": n_failed, "reused": len(reused), **res}


def _attrs(preset: str, name: str, config: str, weights_sha256: str, compression: str | None, signature: str,
           request: str) -> dict[str, Any]:
    """A store's attributes, in one order, whether the extractor was built or the previous store named it."""
    return {"preset": preset, "extractor": name, "config": config, "weights_sha256": weights_sha256,
            "visfeat_version": __version__, "compression": compression or "none", "signature": signature,
            "request": request}


def _extract(extractor: Extractor, items: list[Item], parts: _Parts, batch_size: int, workers: int, name: str,
             storage_dtype: str, worker_start: str | None, out: Path, n_store: int) -> dict[str, Any]:
    """Run the model over `items` into `parts` (resuming after its flushed batches)."""
    from torch.utils.data import DataLoader

    from .prefetch import prefetch

    specs = extractor.fields()
    opts = extractor.config
    if getattr(extractor, "group_by_aspect", False):
        items = aspect_order(items, batch_size * 32, bool(opts.get("exif", True)))
    flushed, start = parts.scan()
    n = len(items)

    need = expected_bytes(specs, n_store, storage_dtype)
    free = shutil.disk_usage(out.parent).free
    print(f"[visfeat] {extractor.preset}: {n} images -> {out} (expected size ~{need / 1e6:.1f} MB, "
          f"free disk {free / 1e9:.1f} GB); fields: {extractor.describe()}", file=sys.stderr, flush=True)
    print(f"[visfeat] device {extractor.device} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}), "
          f"batch {batch_size}, {workers} workers, {model_threads(extractor, workers)} model threads", file=sys.stderr,
          flush=True)
    if 2 * need > free:
        raise OSError(f"not enough free disk for {out}: expected ~{need / 1e9:.2f} GB (x2 while assembling), "
                      f"{free / 1e9:.2f} GB free")
    if start:
        print(f"[visfeat] resuming after {start} images ({len(flushed)} flushed batches)", file=sys.stderr)
    hook = after_flush
    pre = extractor.preprocessor()
    on_device = None
    if opts.get("decode") == "gpu":
        from .device_decode import DevicePreprocess

        on_device = DevicePreprocess(pre.tensor_preprocess(), extractor.device)
    ds = _Images(items, pre, bool(opts.get("exif", True)), int(opts.get("max_pixels")),
                 pre.needed_size if opts.get("decode") == "draft" else None, encoded=on_device is not None)
    # Workers decode single images (all of them work on the batch being filled, so the first batch is not one
    # worker's batch_size decodes away); the main process groups them, in order, into fixed batches.
    # worker_start None = the platform default (fork on Linux). Measured on an H100 host with 14 workers, fork
    # started the first batch in 1.7 s, forkserver in 62 s (bench/README.md); the preprocessor is picklable so
    # spawn/forkserver work where fork is unavailable.
    if workers:
        loader = DataLoader(ds, sampler=range(start, n), batch_size=None, num_workers=workers, collate_fn=_identity,
                            prefetch_factor=max(2, 2 * batch_size // workers), multiprocessing_context=worker_start)
    else:
        loader = _InProcess(ds, range(start, n), model_threads(extractor, 0), batch_size)
    collate = _Collate(extractor.collate, items, on_device)
    fwd = _Forward(extractor, batch_size)
    progress = _Progress(n, start, name or extractor.preset)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(model_threads(extractor, workers))  # restored after the loop
    t0 = time.time()
    k = len(flushed)
    timing = {"first_batch": 0.0, "wait_images": 0.0, "forward": 0.0, "wait_writer": 0.0}
    # one writer thread packs and flushes batch k while the model runs batch k+1; order is kept (one worker)
    pending: list = []
    with ThreadPoolExecutor(max_workers=1) as writer:
        it = prefetch(_group(iter(loader), batch_size, collate), extractor.device)  # CUDA: k+1 while k runs
        while True:
            t = time.perf_counter()
            b = next(it, None)
            timing["wait_images"] += time.perf_counter() - t
            if not timing["first_batch"]:
                timing["first_batch"] = time.time() - t0
            if b is None:
                break
            t = time.perf_counter()
            outs = fwd(b["batch"], len(b["ok"])) if b["ok"] else []
            timing["forward"] += time.perf_counter() - t
            t = time.perf_counter()
            pending.append(writer.submit(lambda k=k, b=b, outs=outs: parts.write(k, _pack(specs, items, b, outs))))
            while len(pending) > 2 or (hook is not None and pending):
                pending.pop(0).result()
            timing["wait_writer"] += time.perf_counter() - t
            progress.update(b["n_items"])
            if hook is not None:
                hook(k)
            k += 1
        t = time.perf_counter()
        for f in pending:
            f.result()
        timing["wait_writer"] += time.perf_counter() - t
    progress.close()
    torch.set_num_threads(threads)
    if isinstance(loader, _InProcess):
        timing["decode_cpu"] = sum(loader.cpu)  # core-seconds (workers' are their processes' own)
    elapsed = time.time() - t0
    return {"seconds": elapsed, "processed": n - start, "timing": timing}


def _assemble(parts: _Parts, specs: list[FieldSpec], out: Path, attrs: dict, storage_dtype: str,
              compression: str | None, items: list[Item], prev: PreviousStore | None, reused: set[str]) -> tuple[int, int]:
    """The store, in item order: each image's row or failure from the previous store (reused), the flushed
    parts (extracted now) or the manifest (a known failure). Rows go to the writer in runs of consecutive rows
    of one source; the writer cuts them into fixed blocks, so the bytes do not depend on where they came from."""
    from .store import read_rows

    new: dict[str, tuple[int, int]] = {}  # image id -> (part, row)
    new_failed: dict[str, str] = {}
    files = parts.scan()[0]
    for k, f in enumerate(files):
        with np.load(f) as z:
            new.update((str(i), (k, j)) for j, i in enumerate(z["image_id"]))
            new_failed.update(zip(map(str, z["failed_id"]), map(str, z["failed_reason"])))
    cache: dict[int, dict[str, np.ndarray]] = {}

    def part(k: int) -> dict[str, np.ndarray]:
        if k not in cache:
            if len(cache) >= 64:  # aspect order permutes rows within windows of 32 batches
                cache.pop(next(iter(cache)))
            with np.load(files[k]) as z:
                arrays = {key: z[key] for key in z.files}
            for s in specs:
                if s.ragged and f"off/{s.ragged}" not in arrays:
                    arrays[f"off/{s.ragged}"] = np.concatenate([[0], np.cumsum(arrays[f"count/{s.ragged}"])])
            cache[k] = arrays
        return cache[k]

    def fetch(run: list[Item], source: tuple) -> tuple:
        """(hw, fields, counts) of a run of consecutive rows of one source."""
        if source[0] == "prev":
            r = read_rows(prev.store, source[1], source[1] + len(run))
            return r.hw, r.fields, r.counts
        z, a, b = part(source[1]), source[2], source[2] + len(run)
        counts = {s.ragged: z[f"count/{s.ragged}"][a:b] for s in specs if s.ragged}
        fields = {s.name: (z[f"field/{s.name}"][z[f"off/{s.ragged}"][a]:z[f"off/{s.ragged}"][b]] if s.ragged
                           else z[f"field/{s.name}"][a:b]) for s in specs}
        return z["image_hw"][a:b], fields, counts

    failed: list[tuple[str, str, str]] = []
    n_ok = 0
    with writing(out, specs, attrs, storage_dtype=storage_dtype, compression=compression) as w:
        run: list[Item] = []
        source: tuple = ()

        def flush() -> None:
            if run:
                hw, fields, counts = fetch(run, source)
                w.append([it.image_id for it in run], [it.path for it in run], hw, fields, counts,
                         [it.sha256 for it in run])

        for it in items:
            if it.error:
                failed.append((it.image_id, it.error, ""))
                continue
            if it.image_id in reused and it.image_id in prev.failed:
                failed.append((it.image_id, prev.failed[it.image_id][0], it.sha256))
                continue
            if it.image_id not in reused and it.image_id in new_failed:
                failed.append((it.image_id, new_failed[it.image_id], it.sha256))
                continue
            here = ("prev", prev.rows[it.image_id][0]) if it.image_id in reused else ("part", *new[it.image_id])
            if run and here == (*source[:-1], source[-1] + len(run)):
                run.append(it)
            else:
                flush()
                run, source = [it], here
            n_ok += 1
        flush()
        w.add_failures([i for i, _, _ in failed], [r for _, r, _ in failed], [d for _, _, d in failed])
        if prev is not None:
            prev.close()  # before the new store replaces it
    return n_ok, len(failed)
