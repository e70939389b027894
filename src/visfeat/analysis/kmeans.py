"""faiss k-means over grid (or any) features, the X-LXMERT way but bounded in memory.

X-LXMERT's run_kmeans.py loads every COCO-train grid vector (~43 GB) and runs faiss.Kmeans(d, 10000, niter=20)
on the CPU. Here training streams the stores in row chunks and keeps a seeded uniform sample of at most
`max_train_vectors` vectors (faiss itself would subsample to k * max_points_per_centroid anyway), so memory is
bounded by the sample, not the dataset; faiss-gpu is used when it sees a GPU. Assignment is a batched
nearest-centroid search (IndexFlatL2, as X-LXMERT) written as a feature store of int32 codes shaped like the
grid, plus X-LXMERT's files (centroids .npy, image id -> codes pickle).
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from visfeat.version import __version__
from visfeat.store.format import Attr, FieldSpec, hw_name
from visfeat.store.reader import FeatureStore, iter_rows, rows_of
from visfeat.store.vds import ShardWindow
from visfeat.store.writer import atomic_path, writing


class KMeansError(ValueError):
    pass


def _field_spec(store: FeatureStore, field: str) -> FieldSpec:
    for s in store.specs:
        if s.name == field:
            return s
    raise KMeansError(f"{store.path} has no field {field!r} (fields: {', '.join(s.name for s in store.specs)})")


def count_vectors(paths: list[str], field: str) -> int:
    """Vectors (grid cells or rows) available in `field` across the stores, from the dataset shapes alone."""
    total = 0
    for p in paths:
        with h5py.File(p, "r") as f:
            shape = f[field].shape
            total += int(np.prod(shape[:-1], dtype=np.int64))
    return total


def _vectors(fields: dict, field: str) -> np.ndarray:
    a = fields[field]
    return a.reshape(-1, a.shape[-1])


def sample_vectors(paths: list[str], field: str, n_sample: int, seed: int, chunk: int = 256) -> np.ndarray:
    """A seeded uniform sample (without replacement) of `n_sample` vectors. A field's vectors are its dataset's rows
    (a ragged field's too: its rows are the regions or cells) flattened to (-1, d) in store order, so only the
    field is read, and only the row chunks holding a sampled vector: memory is the sample plus one chunk (and, in
    a virtual store, the shard files `ShardWindow` lets HDF5 hold open), and a sample much smaller than the
    dataset reads a fraction of it."""
    total = count_vectors(paths, field)
    rng = np.random.default_rng(seed)
    take = np.arange(total) if n_sample >= total else np.sort(rng.choice(total, n_sample, replace=False))
    out: np.ndarray | None = None
    filled = offset = 0
    for p in paths:
        store = FeatureStore(p)
        _field_spec(store, field)
        ds = store.h5[field]
        window = ShardWindow(store.h5) if store.virtual and not _field_spec(store, field).ragged else None
        per_row = int(np.prod(ds.shape[1:-1], dtype=np.int64))
        if out is None:
            out = np.empty((len(take), ds.shape[-1]), np.float32)
        lo, hi = np.searchsorted(take, [offset, offset + ds.shape[0] * per_row])
        mine = take[lo:hi] - offset  # this store's sampled vectors, sorted
        rows = mine // per_row
        for a in np.unique(rows // chunk) * chunk:
            i, j = np.searchsorted(rows, [a, a + chunk])
            if window is not None and (window.touch(int(a)) | window.touch(min(int(a) + chunk, ds.shape[0]) - 1)):
                ds = None  # closed before reopening: HDF5 shares one open dataset (and its shard files) among
                ds = store.h5[field]  # the handles open at once, so an overlapping reopen would close nothing
            block = rows_of(ds, int(a), min(int(a) + chunk, ds.shape[0])).reshape(-1, ds.shape[-1])
            out[filled:filled + j - i] = block[mine[i:j] - a * per_row]
            filled += j - i
        offset += ds.shape[0] * per_row
        store.close()
    assert out is not None and filled == len(take)
    return out


def use_gpu(gpu: str | bool = "auto") -> bool:
    import faiss

    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if isinstance(gpu, str) and gpu != "auto":
        gpu = {"yes": True, "no": False}[gpu]  # the config's spelling
    return bool(n) if gpu == "auto" else bool(gpu)


def train(paths: list[str], out: str, field: str = "grid", k: int = 10000, niter: int = 20, seed: int = 1234,
          max_train_vectors: int | None = None, max_points_per_centroid: int = 256, gpu: str | bool = "auto",
          name: str = "kmeans", npy: str | None = None) -> dict:
    """Train k centroids on a bounded sample of the stores' `field`; write centroids.h5 (+ .npy)."""
    import faiss

    total = count_vectors(paths, field)
    if k > total:
        raise KMeansError(f"k={k} is larger than the {total} training vectors available in field {field!r} of "
                          f"{', '.join(paths)}: choose k <= {total}")
    bound = max_train_vectors or k * max_points_per_centroid
    t0 = time.time()
    x = sample_vectors(paths, field, min(bound, total), seed)
    t_read = time.time() - t0
    on_gpu = use_gpu(gpu)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, gpu=on_gpu, verbose=False,
                      max_points_per_centroid=max(max_points_per_centroid, -(-len(x) // k)))
    t1 = time.time()
    km.train(x)
    t_train = time.time() - t1
    _, labels = km.index.search(x, 1)
    sizes = np.bincount(labels[:, 0], minlength=k)
    settings = {"name": name, "k": k, "niter": niter, "seed": seed, "field": field, "sources": paths,
                "vectors_available": total, "vectors_trained": len(x), "max_train_vectors": bound,
                "gpu": on_gpu, "faiss_version": faiss.__version__, "visfeat_version": __version__}
    tmp = atomic_path(out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(tmp, "w") as f:
        f.create_dataset("centroids", data=km.centroids.astype(np.float32), track_times=False)
        f.create_dataset("objective", data=np.asarray(km.obj, np.float64), track_times=False)
        f.create_dataset("cluster_sizes", data=sizes.astype(np.int64), track_times=False)
        f.attrs["format"] = "visfeat-kmeans"
        f.attrs["settings"] = json.dumps(settings)
        for key in ("k", "niter", "seed", "field", "vectors_trained", "vectors_available"):
            f.attrs[key] = settings[key]
    os.replace(tmp, out)
    if npy:
        np.save(npy, km.centroids.astype(np.float32))
    stats = {"empty_clusters": int((sizes == 0).sum()), "min_size": int(sizes.min()), "max_size": int(sizes.max()),
             "median_size": float(np.median(sizes))}
    print(f"[kmeans {name}] k={k} on {len(x)} of {total} vectors ({x.nbytes / 1e6:.0f} MB sample), "
          f"{'GPU' if on_gpu else 'CPU'}: read {t_read:.1f} s, train {t_train:.1f} s; objective "
          f"{km.obj[0]:.4g} -> {km.obj[-1]:.4g}; cluster sizes {stats}", file=sys.stderr, flush=True)
    return {**settings, **stats, "objective": list(km.obj), "seconds_read": t_read, "seconds_train": t_train}


def assign(store_path: str, centroids_path: str, out: str, pickle_path: str | None = None, chunk: int = 256,
           gpu: str | bool = "auto") -> int:
    """Nearest centroid for every vector of a store's field, as a store of int32 codes shaped like the field."""
    import faiss

    with h5py.File(centroids_path, "r") as f:
        centroids = f["centroids"][()]
        settings = json.loads(f.attrs["settings"])
    field = settings["field"]
    index = faiss.IndexFlatL2(centroids.shape[1])
    if use_gpu(gpu):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(centroids)
    src = FeatureStore(store_path)
    spec = _field_spec(src, field)
    code_specs = [FieldSpec("codes", tuple(spec.shape[:-1]), "int32", spec.ragged)]
    hw_field = hw_name(field) if any(s.name == hw_name(field) for s in src.specs) else None
    if hw_field:  # a grid whose H x W varies per image: the codes keep its shape
        code_specs.append(FieldSpec(hw_name("codes"), (2,), "int32"))
    attrs = {k: v for k, v in src.attrs.items() if k in (Attr.PRESET, Attr.EXTRACTOR, Attr.CONFIG, Attr.WEIGHTS_SHA256)}
    attrs.update({"kmeans": settings["name"], "kmeans_settings": json.dumps(settings),
                  "visfeat_version": __version__, "source_store": store_path})
    codes_by_id: dict[str, np.ndarray] = {}
    n = 0
    with writing(out, code_specs, attrs) as w:
        for ids, paths, hw, fields, counts in iter_rows(src, chunk):
            v = _vectors(fields, field)
            _, labels = index.search(np.ascontiguousarray(v, dtype=np.float32), 1)
            codes = labels[:, 0].astype(np.int32).reshape(fields[field].shape[:-1])
            out_fields = {"codes": codes, **({hw_name("codes"): fields[hw_field]} if hw_field else {})}
            w.append(ids, paths, hw, out_fields, counts)
            if pickle_path and not spec.ragged:
                for i, image_id in enumerate(ids):
                    codes_by_id[image_id] = codes[i].reshape(-1).astype(np.int64)
            n += len(ids)
        failed = src.failed
        w.add_failures([i for i, _ in failed], [r for _, r in failed])
    if pickle_path:  # X-LXMERT: img_id -> (cells,) cluster ids
        with open(pickle_path, "wb") as f:
            pickle.dump(codes_by_id, f)
    return n
