"""Figures that show whether features are sane before anyone trains on them (matplotlib, no display).

`feature_report`: per dataset x extractor: sample images (with boxes and labels when the store has regions),
feature norms (and boxes per image for region stores), failures by reason, and images/s per shard from the
extraction jobs' measurements (engine/stats.py `throughput`, given as data). `kmeans_report`: objective per
iteration, cluster sizes, and images with their grid cells coloured by code. `show`: one image's boxes (or grid)
to a PNG.
"""
from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from visfeat.extractors.vocab import WEIGHTS_ROOT  # noqa: E402
from visfeat.sources.images import ImageError, load_image, load_tar_member  # noqa: E402
from visfeat.store.format import IMAGE_HW, IMAGE_ID, IMAGE_PATH, Attr, offsets_name  # noqa: E402
from visfeat.store.reader import FeatureStore  # noqa: E402


@functools.lru_cache(maxsize=4)
def _tar_members(manifest: str) -> dict[str, tuple[str, int, int]]:
    """image id -> (tar, offset, size) of a tar source's manifest (webdataset, urls)."""
    import pandas as pd

    df = pd.read_parquet(manifest, columns=["image_id", "tar", "offset", "bytes"])
    return {i: (t, int(o), int(n)) for i, t, o, n in zip(df["image_id"], df["tar"], df["offset"], df["bytes"]) if o >= 0}


def _image(root: str | None, store: FeatureStore, i: int):
    """The image of row i, to draw under its features: `root` is the dataset root, or for a tar source its
    manifest.parquet (the image is read in place from its tar). None when it cannot be read."""
    rel = store.h5[IMAGE_PATH].asstr()[i]
    if root is None or not rel:  # imported (published) stores carry no image paths
        return None
    try:
        if root.endswith(".parquet"):
            member = _tar_members(root).get(store.h5[IMAGE_ID].asstr()[i])
            return load_tar_member(*member) if member else None
        return load_image(Path(root) / rel)
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


def _draw(ax, store: FeatureStore, i: int, root: str | None, words, max_boxes: int = 10) -> None:
    row = store.row(i)
    image_id = store.ids[i]
    img = _image(root, store, i)
    if img is not None:
        ax.imshow(img)
    else:
        h, w = row[IMAGE_HW]
        ax.imshow(np.full((max(h, 1), max(w, 1), 3), 230, np.uint8))
    if "boxes" in row:
        for k, (x1, y1, x2, y2) in enumerate(row["boxes"][:max_boxes]):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, color="yellow"))
            label = _label(row, k, words)
            ax.text(x1, y1, label, color="black", fontsize=6, bbox={"facecolor": "yellow", "pad": 1, "lw": 0})
    ax.set_title(f"{image_id} {tuple(int(v) for v in row[IMAGE_HW])}", fontsize=7)
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
    paths = []

    cols = 4
    rows = max(1, -(-min(n, n_samples) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    picks = np.linspace(0, n - 1, min(n, n_samples)).round().astype(int) if n else []
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picks):
        _draw(ax, s, int(i), root, words)
    fig.suptitle(f"{name}: sample images")
    paths.append(out / "samples.png")
    _save(fig, paths[-1])

    names = {sp.name for sp in s.specs}
    field = "global" if "global" in names else ("features" if "features" in names else s.specs[0].name)
    data = s.h5[field][: min(n, 20000) if field != "features" else None]
    vecs = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data[:, None]
    norms = np.linalg.norm(vecs.astype(np.float32), axis=1) if len(vecs) else np.zeros(0)
    boxes = next((offsets_name(sp.ragged) for sp in s.specs if sp.name == "boxes" and sp.ragged), None)
    fig, axes = plt.subplots(1, 2 if boxes else 1, figsize=(10 if boxes else 5, 3.5), squeeze=False)
    axes[0, 0].hist(norms, bins=30, color="tab:blue")
    axes[0, 0].set(title=f"L2 norm of {field} vectors ({len(norms)})", xlabel="norm", ylabel="count")
    if boxes:  # the boxes' group offsets: boxes per image
        counts = np.diff(s.h5[boxes][()])
        axes[0, 1].hist(counts, bins=range(int(counts.max(initial=0)) + 2), color="tab:green")
        axes[0, 1].set(title="boxes per image", xlabel="boxes", ylabel="images")
    paths.append(out / "norms.png")
    _save(fig, paths[-1])

    paths.append(_classes(s, out / "classes.png", words))

    failed = s.failed
    fig, ax = plt.subplots(figsize=(6, 3))
    if failed:
        kinds = Counter(r.split(":")[0] for _, r in failed)
        ax.barh(list(kinds), list(kinds.values()), color="tab:red")
        ax.set(title=f"{len(failed)} failed of {n + len(failed)} images", xlabel="images")
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


def _classes(s: FeatureStore, path: Path, words, top: int = 20) -> Path:
    """The most frequent object classes and attributes over all boxes (region stores)."""
    names = {sp.name for sp in s.specs}
    if "obj_id" not in names:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no regions in this store (no classes or attributes)", ha="center", va="center")
        ax.axis("off")
        _save(fig, path)
        return path
    panels = [("obj_id", "object classes", 0)] + ([("attr_id", "attributes", 1)] if "attr_id" in names else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.25 * top + 1.2), squeeze=False)
    for ax, (field, title, w) in zip(axes.flat, panels):
        counts = Counter(i for i in s.h5[field][()].tolist() if i >= 0).most_common(top)  # -1: none (VinVL)
        labels = [_word(words[w][i]) if words else str(i) for i, _ in counts]
        ax.barh(labels[::-1], [c for _, c in counts][::-1], color="tab:cyan")
        ax.set(title=f"top {len(counts)} {title} ({len(s.h5[field])} boxes)", xlabel="boxes")
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
            ax.set_title(f"{s.ids[int(i)]}: {len(np.unique(codes))} codes", fontsize=7)
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
    s = FeatureStore(store_path)
    if image_id not in s:
        raise KeyError(f"{image_id!r} is not in {store_path}")
    fig, ax = plt.subplots(figsize=(6, 6))
    _draw(ax, s, s.index[image_id], root, _words(s, weights_root), max_boxes=100)
    _save(fig, Path(out))
    return Path(out)
