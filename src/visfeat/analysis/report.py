"""Figures that show whether features are sane before anyone trains on them (matplotlib, no display).

`feature_report`: per dataset x extractor: sample images (with boxes and labels when the store has regions, the
grid cells where it has a grid), feature norms (and boxes per image for region stores), the most frequent classes
(region classes and attributes, or a classifier's top-1 classes), failures by reason, and images/s per shard from
the extraction jobs' measurements (engine/stats.py `throughput`, given as data). `kmeans_report`: objective per
iteration, cluster sizes, and images with their grid cells coloured by code. `show`: one image's boxes or grid
cells, and a classifier's top-5 classes, to a PNG; an image it cannot read is an error saying what to pass (a grey
canvas would look like a result).
"""
from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from visfeat.extractors.vocab import WEIGHTS_ROOT, logit_words  # noqa: E402
from visfeat.sources.images import ImageError, load_image, load_tar_member  # noqa: E402
from visfeat.store.format import FAILED_ID, FAILED_REASON, IMAGE_HW, IMAGE_ID, IMAGE_PATH, Attr, offsets_name  # noqa: E402
from visfeat.store.reader import FeatureStore, rows_of  # noqa: E402


GRID_COLOR = "#00ffff"  # the grid cells' lines: pure cyan, rare in photos
BAR_COLOR = "tab:cyan"  # class bars (classes.png, show)
SAMPLED_ROWS = 20000  # rows a whole-store figure reads (norms, boxes, classes, failures): enough to see, bounded
SAMPLED_SPANS = 20  # ... as this many runs of consecutive rows spread over the store: a virtual store's read opens
# only the shard files those runs lie in, and a sample spans the dataset rather than its first shards
SAMPLED_BYTES = 1 << 28  # ... and fewer rows where rows are large (a grid per image), so memory stays bounded
TOP_CLASSES = 5  # classes `show` names for a classifier's image


def tar_member(manifest: str, image_id: str, rel: str) -> tuple[str, int, int] | None:
    """(tar, offset, size) of a tar source's image: the store's path names its tar and member (`NAME.tar/member`),
    the manifest lists the tars (one row each, relative to its recorded root), and that one tar's headers give
    the member; so a figure reads one tar's headers, never a row per image. A manifest with a row per image (as
    written before tars were only listed) is read for that id alone."""
    import pyarrow.parquet as pq

    if "offset" in pq.read_schema(manifest).names:
        t = pq.read_table(manifest, columns=["tar", "offset", "bytes"], filters=[("image_id", "==", image_id)])
        return next(((str(a), int(o), int(n)) for a, o, n in zip(*(t[c].to_pylist() for c in t.column_names))
                     if o >= 0), None)
    tar = _manifest_tars(manifest).get(rel.split("/", 1)[0])
    return None if tar is None else _tar_samples(tar).get(rel)


@functools.lru_cache(maxsize=4)
def _manifest_tars(manifest: str) -> dict[str, str]:
    """A tar source's tars by file name (the first part of its images' store paths), as absolute paths."""
    import pandas as pd

    from visfeat.sources.manifest import manifest_root

    root = manifest_root(manifest) or str(Path(manifest).parent)
    return {Path(t).name: str(Path(root) / t) for t in pd.read_parquet(manifest, columns=["tar"])["tar"]}


@functools.lru_cache(maxsize=64)
def _tar_samples(tar: str) -> dict[str, tuple[str, int, int]]:
    """Store path -> (tar, offset, size) of one tar's image members, from its headers (tars.scan_webdataset)."""
    from visfeat.sources.tars import scan_webdataset

    df = scan_webdataset([tar], headers=False)
    return {p: (t, int(o), int(n)) for p, t, o, n in zip(df["path"], df["tar"], df["offset"], df["bytes"]) if o >= 0}


def sample_spans(n: int, rows: int = SAMPLED_ROWS, spans: int = SAMPLED_SPANS) -> list[tuple[int, int]]:
    """Row ranges [a, b) of about `rows` rows in `spans` equal runs spaced evenly over 0..n: every row when n fits."""
    if n <= rows:
        return [(0, n)] if n else []
    run = max(1, rows // spans)
    return [(int(a), int(a) + run) for a in np.linspace(0, n - run, spans).round().astype(np.int64)]


def sampled(ds) -> np.ndarray:
    """`sample_spans` of a dataset's rows (images, or a ragged field's rows: boxes), concatenated."""
    row = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    rows = min(SAMPLED_ROWS, max(SAMPLED_SPANS, SAMPLED_BYTES // row))
    parts = [rows_of(ds, a, b) for a, b in sample_spans(len(ds), rows)]
    return np.concatenate(parts) if parts else rows_of(ds, 0, 0)


def _root_hint(store: FeatureStore) -> str:
    """What to pass as --root for this store: the tar source's manifest when one lies beside it (the workflow's
    results/DATASET/), else the dataset root."""
    beside = Path(store.path).parent / "manifest.parquet"
    if beside.is_file():
        import pyarrow.parquet as pq

        if "tar" in pq.read_schema(beside).names:
            return f"--root {beside} (its tar source's manifest)"
    return ("--root DATASET_ROOT, the folder its image paths are relative to (a webdataset or urls source: "
            "--root results/DATASET/manifest.parquet)")


def read_image(root: str | None, store: FeatureStore, i: int):
    """The image of row i: `root` is the dataset root, or for a tar source its manifest.parquet (the image is read
    in place from its tar). None for an imported store, which names no image files. Raises FileNotFoundError (one
    line saying what to pass) when the image is not there, ImageError when it does not decode."""
    rel = store.h5[IMAGE_PATH].asstr()[i]
    if not rel:  # imported (published) stores carry no image paths
        return None
    image_id = store.h5[IMAGE_ID].asstr()[i]
    if root is None:
        raise FileNotFoundError(f"{image_id} is {rel} under its dataset root: pass {_root_hint(store)}")
    if root.endswith(".parquet"):
        member = tar_member(root, image_id, rel)
        if member is None:
            raise FileNotFoundError(f"{image_id} is not in {root}: pass {_root_hint(store)}")
        return load_tar_member(*member)
    path = Path(root) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass {_root_hint(store)}")
    return load_image(path)


def _image(root: str | None, store: FeatureStore, i: int):
    """`read_image`, or None when it cannot be read: the report draws what it can of every store."""
    try:
        return read_image(root, store, i)
    except (ImageError, OSError, KeyError, ValueError):
        return None


def _words(store: FeatureStore, weights_root: str):
    """The preset's vocabularies, saying on stdout (the rule's log) where the labels come from."""
    from visfeat.extractors.vocab import labelmap_path, words_for

    preset = str(store.attrs.get(Attr.PRESET, ""))
    words = words_for(preset, weights_root)
    path = labelmap_path(preset, weights_root)
    if path is not None:
        print(f"[visfeat] labels: words from {path}" if words else f"[visfeat] labels: ids ({path} is not there)")
    return words


def _label(row: dict, k: int, words) -> str:
    """'attribute object' in words when the preset ships its vocabularies, else the ids."""
    if "obj_id" not in row:
        return ""
    obj = int(row["obj_id"][k])
    attr = int(row["attr_id"][k]) if "attr_id" in row else None
    if attr is not None and attr < 0:  # VinVL: no attribute above its threshold
        attr = None
    if words is None:
        return str(obj) if attr is None else f"{attr}:{obj}"
    return _word(words[0][obj]) if attr is None else f"{_word(words[1][attr])} {_word(words[0][obj])}"


def _word(line: str) -> str:
    """A vocabulary line lists synonyms ("gray,grey"): the first is shown."""
    return line.split(",")[0]


def top_classes(logits: np.ndarray, names, k: int = TOP_CLASSES) -> list[tuple[str, float]]:
    """The k most probable classes of one image (softmax of its logits), named when the preset ships names."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    return [(_word(names[j]) if names else f"class {j}", float(p[j])) for j in np.argsort(-p, kind="stable")[:k]]


def _grid_cells(ax, config: dict, cells: tuple[int, int], h: int, w: int) -> None:
    """The grid's cells over the image, where the preset's crop puts them (`grid_extent`)."""
    x0, x1, y1, y0 = grid_extent(config, h, w)
    gh, gw = cells
    ax.vlines(np.linspace(x0, x1, gw + 1), y0, y1, colors=GRID_COLOR, lw=1)
    ax.hlines(np.linspace(y0, y1, gh + 1), x0, x1, colors=GRID_COLOR, lw=1)


def _draw(ax, store: FeatureStore, i: int, img, words, names, max_boxes: int = 10) -> None:
    """Row i over its image (`img`; None: a grey canvas of its size): boxes with labels, or the grid cells;
    the title says a classifier's top class."""
    row = store.row(i)
    h, w = (int(v) for v in row[IMAGE_HW])
    ax.imshow(img if img is not None else np.full((max(h, 1), max(w, 1), 3), 230, np.uint8))
    if "boxes" in row:
        for k, (x1, y1, x2, y2) in enumerate(row["boxes"][:max_boxes]):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, color="yellow"))
            label = _label(row, k, words)
            ax.text(x1, y1, label, color="black", fontsize=6, bbox={"facecolor": "yellow", "pad": 1, "lw": 0})
    elif "grid" in row and row["grid"].ndim == 3:
        _grid_cells(ax, store.config, row["grid"].shape[:2], h, w)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
    top = f": {top_classes(row['logits'], names, 1)[0][0]}" if "logits" in row else ""
    ax.set_title(f"{store.h5[IMAGE_ID].asstr()[i]} {(h, w)}{top}", fontsize=7)
    ax.axis("off")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def feature_report(store_path: str, out_dir: str, root: str | None = None,
                   throughput: list[tuple[str, int, float]] = (), n_samples: int = 8,
                   weights_root: str = WEIGHTS_ROOT) -> list[Path]:
    """The store's figures into `out_dir`; `throughput`: (shard, images, seconds) per extraction job."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = FeatureStore(store_path)
    name = f"{s.attrs.get(Attr.EXTRACTOR, '')} ({s.attrs.get(Attr.PRESET, '')})"
    n = len(s)
    words = _words(s, weights_root)
    class_names = logit_words(str(s.attrs.get(Attr.PRESET, "")))
    paths = []

    cols = 4
    rows = max(1, -(-min(n, n_samples) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    picks = np.linspace(0, n - 1, min(n, n_samples)).round().astype(int) if n else []
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picks):
        _draw(ax, s, int(i), _image(root, s, int(i)), words, class_names)
    fig.suptitle(f"{name}: sample images")
    paths.append(out / "samples.png")
    _save(fig, paths[-1])

    names = {sp.name for sp in s.specs}
    spec = next(sp for sp in s.specs if sp.name == ("global" if "global" in names else
                                                     "features" if "features" in names else s.specs[0].name))
    data = sampled(s.h5[spec.name])
    vecs = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data[:, None]
    norms = np.linalg.norm(vecs.astype(np.float32), axis=1) if len(vecs) else np.zeros(0)
    boxes = next((sp.ragged for sp in s.specs if sp.name == "boxes" and sp.ragged), None)
    fig, axes = plt.subplots(1, 2 if boxes else 1, figsize=(10 if boxes else 5, 3.5), squeeze=False)
    axes[0, 0].hist(norms, bins=30, color="tab:blue")
    axes[0, 0].set(title=f"L2 norm of {spec.name} vectors ({len(norms)})", xlabel="norm", ylabel="count")
    if boxes:  # the boxes' group offsets: boxes per image
        counts = np.concatenate([np.diff(s.h5[offsets_name(boxes)][a:b + 1]) for a, b in sample_spans(n)]
                                or [np.zeros(0, np.int64)])
        axes[0, 1].hist(counts, bins=range(int(counts.max(initial=0)) + 2), color="tab:green")
        axes[0, 1].set(title=f"boxes per image ({len(counts)} of {n} images)", xlabel="boxes", ylabel="images")
    paths.append(out / "norms.png")
    _save(fig, paths[-1])

    paths.append(_classes(s, out / "classes.png", words, class_names))

    n_failed = len(s.h5[FAILED_ID])
    failed = [(i.decode(), r.decode()) for i, r in zip(sampled(s.h5[FAILED_ID]), sampled(s.h5[FAILED_REASON]))]
    fig, ax = plt.subplots(figsize=(6, 3))
    if failed:
        kinds = Counter(r.split(":")[0] for _, r in failed)
        ax.barh(list(kinds), list(kinds.values()), color="tab:red")
        of = "" if len(failed) == n_failed else f"; reasons of {len(failed)}"
        ax.set(title=f"{n_failed} failed of {n + n_failed} images{of}", xlabel="images")
        for k, (i, r) in enumerate(failed[:6]):
            ax.text(1.02, 0.95 - 0.12 * k, f"{i}: {r[:60]}", transform=ax.transAxes, fontsize=6, va="top")
    else:
        ax.text(0.5, 0.5, f"no failures among {n} images", ha="center", va="center")
        ax.axis("off")
    paths.append(out / "failures.png")
    _save(fig, paths[-1])

    rates = list(throughput)
    fig, ax = plt.subplots(figsize=(6, 3))
    if rates:
        ax.bar([r[0] for r in rates], [r[1] / max(r[2], 1e-9) for r in rates], color="tab:purple")
        total = sum(r[1] for r in rates) / max(sum(r[2] for r in rates), 1e-9)
        ax.set(title=f"images/s per shard (all shards: {total:.2f} img/s per job-second)", xlabel="shard",
               ylabel="images/s")
    else:
        ax.text(0.5, 0.5, "no extraction measurements found", ha="center", va="center")
        ax.axis("off")
    paths.append(out / "throughput.png")
    _save(fig, paths[-1])
    return paths


def _top1_classes(s: FeatureStore, names, top: int) -> tuple[list[tuple[str, int]], int]:
    """The most frequent top-1 classes of a classifier's `logits` over SAMPLED_ROWS images (`sample_spans`), and
    how many images that is; read a span at a time, so a large store's logits are never in memory at once."""
    counts, n = Counter(), 0
    for a, b in sample_spans(len(s)):
        for c in range(a, b, 4096):
            block = s.h5["logits"][c:min(c + 4096, b)]
            counts.update(np.argmax(block, axis=1).tolist())
            n += len(block)
    return [(_word(names[j]) if names else f"class {j}", c) for j, c in counts.most_common(top)], n


def _classes(s: FeatureStore, path: Path, words, names, top: int = 20) -> Path:
    """The most frequent object classes and attributes over all boxes (region stores), or a classifier's most
    frequent top-1 classes (stores with `logits`)."""
    fields = {sp.name for sp in s.specs}
    if "obj_id" not in fields and "logits" in fields:
        counts, n = _top1_classes(s, names, top)
        fig, ax = plt.subplots(figsize=(6, 0.25 * max(len(counts), 8) + 1.2))
        ax.barh([c for c, _ in counts][::-1], [k for _, k in counts][::-1], color=BAR_COLOR)
        ax.set(title=f"top {len(counts)} top-1 classes ({n} of {len(s)} images)", xlabel="images")
        ax.tick_params(axis="y", labelsize=7)
        _save(fig, path)
        return path
    if "obj_id" not in fields:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no regions or classes in this store", ha="center", va="center")
        ax.axis("off")
        _save(fig, path)
        return path
    panels = [("obj_id", "object classes", 0)] + ([("attr_id", "attributes", 1)] if "attr_id" in fields else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.25 * top + 1.2), squeeze=False)
    for ax, (field, title, w) in zip(axes.flat, panels):
        ids = sampled(s.h5[field])
        counts = Counter(i for i in ids.tolist() if i >= 0).most_common(top)  # -1: none (VinVL)
        labels = [_word(words[w][i]) if words else str(i) for i, _ in counts]
        ax.barh(labels[::-1], [c for _, c in counts][::-1], color=BAR_COLOR)
        of = "" if len(ids) == len(s.h5[field]) else f" of {len(s.h5[field])}"
        ax.set(title=f"top {len(counts)} {title} ({len(ids)}{of} boxes)", xlabel="boxes")
        ax.tick_params(axis="y", labelsize=7)
    _save(fig, path)
    return path


def grid_extent(config: dict, h: int, w: int) -> tuple[float, float, float, float]:
    """Where a fixed grid lies in the original image (matplotlib extent): the centre crop of presets that resize
    the short side then crop (CLIP: crop = resize; effnet: 224 of 256), or the whole image when squashed."""
    if config.get("squash_resize") or "image_size" not in config:
        return (0, w, h, 0)
    side = min(h, w) * config["image_size"] / config.get("resize_size", config["image_size"])
    x0, y0 = (w - side) / 2, (h - side) / 2
    return (x0, x0 + side, y0 + side, y0)


def kmeans_report(centroids_h5: str, codes_store: str | None, out_dir: str, root: str | None = None,
                  n_images: int = 4) -> list[Path]:
    import h5py

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with h5py.File(centroids_h5, "r") as f:
        obj, sizes = f["objective"][()], f["cluster_sizes"][()]
        k = int(f.attrs["k"])
    paths = []
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, len(obj) + 1), obj, marker="o")
    ax.set(title=f"k-means objective (k={k})", xlabel="iteration", ylabel="objective")
    paths.append(out / "objective.png")
    _save(fig, paths[-1])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(sizes, bins=min(50, max(5, k // 4)), color="tab:orange")
    ax.set(title=f"cluster sizes ({int((sizes == 0).sum())} empty of {k})", xlabel="vectors", ylabel="clusters")
    paths.append(out / "cluster_sizes.png")
    _save(fig, paths[-1])
    if codes_store:
        s = FeatureStore(codes_store)
        picks = np.linspace(0, len(s) - 1, min(len(s), n_images)).round().astype(int) if len(s) else []
        fig, axes = plt.subplots(1, max(1, len(picks)), figsize=(3 * max(1, len(picks)), 3), squeeze=False)
        cmap = plt.get_cmap("tab20", max(k, 2))
        for ax, i in zip(axes.flat, picks):
            codes = s.row(int(i))["codes"]
            img = _image(root, s, int(i))
            h, w = s.row(int(i))[IMAGE_HW]
            if img is not None:
                ax.imshow(img)
            if img is None:
                ax.imshow(np.full((h, w, 3), 230, np.uint8))
            ax.imshow(codes, cmap=cmap, vmin=0, vmax=k - 1, alpha=0.45, extent=grid_extent(s.config, h, w),
                      interpolation="nearest")
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_title(f"{s.h5[IMAGE_ID].asstr()[int(i)]}: {len(np.unique(codes))} codes", fontsize=7)
            ax.axis("off")
        paths.append(out / "codes.png")
        _save(fig, paths[-1])
    else:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no dataset assigned (kmeans.<job>.assign)", ha="center", va="center")
        ax.axis("off")
        paths.append(out / "codes.png")
        _save(fig, paths[-1])
    return paths


def show(store_path: str, image_id: str, out: str, root: str | None = None,
         weights_root: str = WEIGHTS_ROOT) -> Path:
    """One image's boxes or grid cells to `out`, beside a classifier's top-5 classes (also printed). An image that
    cannot be read raises (read_image): only an imported store, which names no image files, is drawn on grey."""
    s = FeatureStore(store_path)
    i = s.find(image_id)  # one lookup: no index of every id
    if i is None:
        raise KeyError(f"{image_id!r} is not in {store_path}")
    img = read_image(root, s, i)
    row = s.row(i)
    names = logit_words(str(s.attrs.get(Attr.PRESET, "")))
    top = top_classes(row["logits"], names) if "logits" in row else []
    fig, axes = plt.subplots(1, 2 if top else 1, figsize=(10 if top else 6, 6), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]} if top else None)
    _draw(axes[0, 0], s, i, img, _words(s, weights_root), names, max_boxes=100)
    if top:
        print(f"[visfeat] {image_id}: top-{len(top)} classes: " + ", ".join(f"{c} {p:.2f}" for c, p in top))
        axes[0, 1].barh([c for c, _ in top][::-1], [p for _, p in top][::-1], color=BAR_COLOR)
        axes[0, 1].set(title=f"top-{len(top)} classes", xlabel="probability", xlim=(0, 1))
    _save(fig, Path(out))
    return Path(out)
