"""Decoding and preprocessing between the items and the model: a map-style dataset for DataLoader workers
(`ImageSamples`: an image or the reason it failed), the in-process decoder for `workers: 0` (`InProcess`), the
collation of samples into batches (`Collate`), and aspect-ratio ordering so detector batches pad little."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

from visfeat.engine.items import Item
from visfeat.sources.images import ImageError, full_size, load_image, load_tar_member

if TYPE_CHECKING:  # torch is imported only where a model runs: a rerun with nothing to extract never loads it
    pass


class ImageSamples:
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
                from visfeat.engine.device_decode import read_sample

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


class Collate:
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
    from visfeat.sources.images import header_size

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


def identity(x):
    return x


class InProcess:
    """`workers: 0`: the main process decodes each batch's images itself, with `threads` threads (PIL's decoder
    and resize release the GIL), between two forwards. On a CPU the decoding and the model then take turns on
    every core instead of competing for them, and more threads shorten each image's decoding (bench/README.md,
    "Settings behind the CPU defaults")."""

    def __init__(self, ds: ImageSamples, indices: range, threads: int, chunk: int):
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


def group_batches(samples, batch_size: int, collate: "Collate"):
    """Consecutive samples -> collated batches of `batch_size` (the last one shorter)."""
    buf = []
    for s in samples:
        buf.append(s)
        if len(buf) == batch_size:
            yield collate(buf)
            buf = []
    if buf:
        yield collate(buf)
