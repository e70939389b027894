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
SOURCE_DATE_EPOCH) wherever the model's output does not depend on which images share a batch."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from visfeat.version import __version__
from visfeat.engine.cores import AUTO, resolve_workers
from visfeat.engine.forward import Forward, model_threads
from visfeat.engine.items import Item, with_hashes
from visfeat.engine.loaders import Collate, ImageSamples, InProcess, aspect_order, group_batches, identity
from visfeat.engine.parts import Parts, pack, parts_signature
from visfeat.engine.request import OPTIONS, ExtractRequest, RequestError
from visfeat.engine.reuse import PreviousStore, extractor_signature
from visfeat.engine.stats import done_line
from visfeat.store.format import Attr, FieldSpec, specs_from_json
from visfeat.store.writer import writing

if TYPE_CHECKING:  # torch is imported only where a model runs: a rerun with nothing to extract never loads it
    from visfeat.extractors.base import Extractor


# Hook called with the batch index once that batch's part file is on disk (None: no call, the writer runs
# ahead). Tests set it to pause there, so that a kill lands between two flushed batches.
after_flush: Callable[[int], None] | None = None


def expected_bytes(specs: list[FieldSpec], n_images: int, storage_dtype: str, rows_per_image: int = 100) -> int:
    per = 0
    for s in specs:
        itemsize = 2 if (storage_dtype == "float16" and np.dtype(s.dtype).kind == "f") else np.dtype(s.dtype).itemsize
        per += int(np.prod(s.shape, dtype=np.int64)) * itemsize * (rows_per_image if s.ragged else 1)
    return per * n_images


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during an extraction, its flushed batches kept: the message says how far it got and how to go on
    (the command line prints it as its one line)."""


class _Progress:
    """tqdm on a terminal; in logs, plain lines with the rate and the time left, every `every` seconds and at
    the end (a log read by `tail` or the Snakemake console should show life without flooding)."""

    def __init__(self, total: int, initial: int, desc: str, every: float = 10.0):
        self.total, self.n, self.t0, self.start = total, initial, time.time(), initial
        self.last, self.every = 0.0, every  # the first batch is reported at once
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="img")
        self.desc = desc

    def update(self, k: int) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif time.time() - self.last >= self.every or self.n == self.total:
            self.last = time.time()
            rate = (self.n - self.start) / max(1e-9, time.time() - self.t0)
            print(f"[{self.desc}] {self.n}/{self.total} images ({100 * self.n / max(1, self.total):.1f}%) "
                  f"{rate:.2f} img/s, {_eta(self.total - self.n, rate)} left", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _eta(remaining: int, rate: float) -> str:
    """The time `remaining` images take at `rate` img/s, as h:mm:ss ("?" before a rate is known)."""
    if remaining <= 0:
        return "0:00:00"
    if rate <= 0:
        return "?"
    s = round(remaining / rate)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_extraction(
    extractor: Extractor | Callable[[], Extractor],
    items: list[Item],
    out: str | os.PathLike,
    batch_size: int = 8,
    workers: int | str = AUTO,
    name: str | None = None,
    storage_dtype: str = "float32",
    compression: str | None = None,
    worker_start: str | None = None,
    request: str = "",
) -> dict[str, Any]:
    """Extract `items` into the store `out`, reusing a previous `out`'s rows of unchanged images (module doc);
    resumes from `{out}.parts/`; returns counts and timing. `workers`: a count, or `auto` (engine/cores.py).
    Ctrl-C raises Interrupted, the flushed batches kept. `extractor` may be a function building it: then it is
    built only when something needs the model and the previous store was made by another `request`
    (request.request_digest)."""
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
            attrs = _attrs(ex.preset, name, json.dumps(ex.config, sort_keys=True), ex.weights_sha256,
                           compression, sig, request)
        else:  # nothing to extract: the previous store says what the extractor is
            pa = prev.attrs
            specs = specs_from_json(pa[Attr.FIELDS])
            attrs = _attrs(pa[Attr.PRESET], pa[Attr.EXTRACTOR], pa[Attr.CONFIG], pa[Attr.WEIGHTS_SHA256], compression,
                           sig, request)
        out.parent.mkdir(parents=True, exist_ok=True)
        parts = Parts(out, parts_signature(sig, todo))
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
    res = {"images": n_ok, "failed": n_failed, "reused": len(reused), **res}
    print(done_line(res, out), file=sys.stderr, flush=True)
    return res


def extract(req: ExtractRequest) -> dict[str, Any]:
    """Run a `visfeat extract` request: its items, their given boxes, its digest, then run_extraction, which
    builds the extractor only when an image needs the model (an incremental rerun may need none)."""
    from visfeat.extractors.registry import check_options
    from visfeat.sources.given_boxes import digest

    # `--set` keys and value types before an image is read; an instance option given there names its flag
    check_options(req.options["preset"], dict(req.preset_options), {o.name: o.flag for o in OPTIONS})
    items = request_items(req)
    boxes = given_boxes(req, items)
    o = req.options
    return run_extraction(lambda: build_extractor(req, boxes), items, req.out, batch_size=o["batch_size"],
                          workers=o["workers"], name=o["name"], storage_dtype=o["dtype"],
                          compression=o["compression"], request=req.digest(None if boxes is None else digest(boxes)))


def request_items(req: ExtractRequest) -> list[Item]:
    from visfeat.engine.items import folder_items, manifest_items, read_list

    if req.images:
        return folder_items(req.images)
    if req.list_file:
        return read_list(req.list_file, req.root)
    from visfeat.sources.manifest import manifest_root, manifest_shards

    # a tar source's manifest records its tar root, for a command line without --root
    root = req.root or manifest_root(req.manifest) or Path(req.manifest).parent
    if req.shard is None:  # the whole manifest: its shards in turn
        n = manifest_shards(req.manifest) or 1
        return [it for i in range(n) for it in manifest_items(req.manifest, n, i, root)]
    # the workflow's extract job: its shard of the manifest, read directly (no list file per shard)
    return manifest_items(req.manifest, req.shards, req.shard, root)


def given_boxes(req: ExtractRequest, items: list[Item]) -> dict[str, np.ndarray] | None:
    """The --boxes file read and checked to cover every item; None without one."""
    path = req.options["boxes"]
    if not path:
        return None
    from visfeat.sources.given_boxes import check_covered, read_boxes

    try:
        boxes = read_boxes(path)
        check_covered(boxes, [it.image_id for it in items], path)
    except (OSError, ValueError) as e:
        raise RequestError(f"--boxes: {e}") from None
    return boxes


def build_extractor(req: ExtractRequest, boxes: dict[str, np.ndarray] | None) -> Extractor:
    """The request's extractor, given its `boxes`."""
    from visfeat.extractors.registry import load_extractor

    o = req.options
    if o["device"] != "cpu":
        from visfeat.engine.gpus import claim_gpu

        claim_gpu()  # several GPUs, no scheduler: one per job (before CUDA initialises)
    ex = load_extractor(o["preset"], weights=o["weights"], device=o["device"], amp=o["amp"], **req.preset_options)
    if boxes is not None:
        try:
            ex.set_given_boxes(boxes)
        except ValueError as e:
            raise RequestError(f"--boxes: {e}") from None
    return ex


def _attrs(preset: str, name: str, config: str, weights_sha256: str, compression: str | None, signature: str,
           request: str) -> dict[str, Any]:
    """A store's attributes, in one order, whether the extractor was built or the previous store named it."""
    return {Attr.PRESET: preset, Attr.EXTRACTOR: name, Attr.CONFIG: config, Attr.WEIGHTS_SHA256: weights_sha256,
            Attr.VISFEAT_VERSION: __version__, Attr.COMPRESSION: compression or "none", Attr.SIGNATURE: signature,
            Attr.REQUEST: request}


def _extract(extractor: Extractor, items: list[Item], parts: Parts, batch_size: int, workers: int | str, name: str,
             storage_dtype: str, worker_start: str | None, out: Path, n_store: int) -> dict[str, Any]:
    """Run the model over `items` into `parts` (resuming after its flushed batches); Ctrl-C waits for the
    batches being written and raises Interrupted."""
    from torch.utils.data import DataLoader

    from visfeat.engine.prefetch import prefetch

    specs = extractor.fields()
    opts = extractor.config
    if getattr(extractor, "group_by_aspect", False):
        items = aspect_order(items, batch_size * 32, bool(opts.get("exif", True)))
    flushed, start = parts.scan()
    n = len(items)
    workers, workers_said = resolve_workers(workers)

    need = expected_bytes(specs, n_store, storage_dtype)
    free = shutil.disk_usage(out.parent).free
    print(f"[visfeat] {extractor.preset}: {n} images -> {out} (expected size ~{need / 1e6:.1f} MB, "
          f"free disk {free / 1e9:.1f} GB); fields: {extractor.describe()}", file=sys.stderr, flush=True)
    print(f"[visfeat] device {extractor.device} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}), "
          f"batch {batch_size}, {workers_said}, {model_threads(extractor, workers)} model threads", file=sys.stderr,
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
        from visfeat.engine.device_decode import DevicePreprocess

        on_device = DevicePreprocess(pre.tensor_preprocess(), extractor.device)
    ds = ImageSamples(items, pre, bool(opts.get("exif", True)), int(opts.get("max_pixels")),
                 pre.needed_size if opts.get("decode") == "draft" else None, encoded=on_device is not None)
    # Workers decode single images (all of them work on the batch being filled, so the first batch is not one
    # worker's batch_size decodes away); the main process groups them, in order, into fixed batches.
    # worker_start None = the platform default (fork on Linux): forkserver delays the first batch by a minute
    # with many workers (bench/README.md, "clip_pipeline.py", H100); the preprocessor is picklable so
    # spawn/forkserver work where fork is unavailable.
    if workers:
        loader = DataLoader(ds, sampler=range(start, n), batch_size=None, num_workers=workers, collate_fn=identity,
                            prefetch_factor=max(2, 2 * batch_size // workers), multiprocessing_context=worker_start)
    else:
        loader = InProcess(ds, range(start, n), model_threads(extractor, 0), batch_size)
    collate = Collate(extractor.collate, items, on_device)
    fwd = Forward(extractor, batch_size)
    progress = _Progress(n, start, name or extractor.preset)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(model_threads(extractor, workers))  # restored after the loop, however it ends
    t0 = time.time()
    k = len(flushed)
    timing = {"first_batch": 0.0, "wait_images": 0.0, "forward": 0.0, "wait_writer": 0.0}
    # one writer thread packs and flushes batch k while the model runs batch k+1; order is kept (one worker)
    pending: list = []
    try:
        with ThreadPoolExecutor(max_workers=1) as writer:
            it = prefetch(group_batches(iter(loader), batch_size, collate), extractor.device)  # CUDA: k+1 while k runs
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
                pending.append(writer.submit(lambda k=k, b=b, outs=outs: parts.write(k, pack(specs, items, b, outs))))
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
    except KeyboardInterrupt:  # the writes under way have finished (the executor waited): the parts are whole
        done = parts.scan()[1]
        raise Interrupted(f"interrupted after {done} of {n} images; rerun the same command to resume") from None
    finally:
        progress.close()
        torch.set_num_threads(threads)
    if isinstance(loader, InProcess):
        timing["decode_cpu"] = sum(loader.cpu)  # core-seconds (workers' are their processes' own)
    elapsed = time.time() - t0
    return {"seconds": elapsed, "processed": n - start, "timing": timing}


def _assemble(parts: Parts, specs: list[FieldSpec], out: Path, attrs: dict, storage_dtype: str,
              compression: str | None, items: list[Item], prev: PreviousStore | None, reused: set[str]) -> tuple[int, int]:
    """The store, in item order: each image's row or failure from the previous store (reused), the flushed
    parts (extracted now) or the manifest (a known failure). Rows go to the writer in runs of consecutive rows
    of one source; the writer cuts them into fixed blocks, so the bytes do not depend on where they came from."""
    from visfeat.store.reader import read_rows

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
