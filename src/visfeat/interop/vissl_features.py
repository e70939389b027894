"""VISSL's on-disk feature layout, written from a store and read back with the API of VISSL's
`ExtractedFeaturesLoader` (vissl/utils/extract_features_utils.py), without VISSL.

Layout (vissl/trainer/trainer_main.py _save_extracted_features): per layer three files
`rank{R}_chunk{C}_{split}_{layer}_{features,targets,inds}.npy`: features (N, ...) float32 as the model gave them,
targets (N, 1) int64, inds (N,) int64 sorted, the sample index in the dataset. The exporter writes one chunk
(rank0_chunk0: CHUNK_THRESHOLD -1 semantics), inds = the store's row index, and targets = that same index: VISSL's
extraction config (extract_resnet_in1k_8gpu.yaml) uses LABEL_TYPE sample_index, which is what VISSL writes for a
dataset without labels (a store has none). `{split}_image_ids.txt` beside them maps index i (line i) to its image id.

`ExtractedFeaturesLoader` reads either that layout (a folder, VISSL's own output included) or a visfeat store
(an .h5 file; `split` is then not used: a store is one split, its rows are the indices, targets = indices):
- load_features(input_dir, split, layer, flatten_features=False): every shard merged by index (a repeated index
  keeps the last shard's row), sorted by index; {"features", "targets", "inds"}.
- sample_features(input_dir, split, layer, num_samples, seed, flatten_features=False): reservoir sampling with
  numpy's default_rng(seed) over the shards in order, the sample sorted by index; num_samples < 0 = load_features.
Shard order: VISSL takes the directory listing's order (unspecified); we take (rank, chunk) order, so on one shard
the samples equal VISSL's for the same seed, and across shards they are reproducible.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np


class ExtractedFeaturesShardPaths(NamedTuple):
    feature_file: str
    targets_file: str
    indices_file: str


class ExtractedFeatures(NamedTuple):
    features: np.ndarray
    targets: np.ndarray
    indices: np.ndarray

    @property
    def num_samples(self) -> int:
        return self.features.shape[0]


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _is_store(path: str | os.PathLike) -> bool:
    return Path(path).is_file()


def _store_rows(path: str, layer: str, chunk: int = 1024) -> Iterator[ExtractedFeatures]:
    from visfeat.store.reader import FeatureStore

    with FeatureStore(path) as store:
        spec = next((s for s in store.specs if s.name == layer), None)
        if spec is None or spec.ragged:
            have = [s.name for s in store.specs if not s.ragged]
            raise ValueError(f"No features found for layer {layer!r} in {path} (fixed fields: {have})")
        ds, n = store.h5[layer], len(store)
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            inds = np.arange(a, b, dtype=np.int64)
            yield ExtractedFeatures(ds[a:b].astype(np.float32, copy=False), inds.reshape(-1, 1), inds)


class ExtractedFeaturesLoader:
    """Same API and semantics as vissl.utils.extract_features_utils.ExtractedFeaturesLoader; `input_dir` may also
    be a visfeat store (.h5)."""

    @staticmethod
    def get_shard_file_names(input_dir: str, split: str, layer: str) -> list[ExtractedFeaturesShardPaths]:
        pattern = re.compile(rf"(.*)_{re.escape(split)}_{re.escape(layer)}_features\.npy")
        prefixes = sorted((m.group(1) for f in os.listdir(input_dir) if (m := pattern.fullmatch(f))), key=_natural_key)
        return [
            ExtractedFeaturesShardPaths(
                feature_file=os.path.join(input_dir, f"{p}_{split}_{layer}_features.npy"),
                targets_file=os.path.join(input_dir, f"{p}_{split}_{layer}_targets.npy"),
                indices_file=os.path.join(input_dir, f"{p}_{split}_{layer}_inds.npy"),
            )
            for p in prefixes
        ]

    @classmethod
    def load_feature_shard(cls, paths: ExtractedFeaturesShardPaths) -> ExtractedFeatures:
        return ExtractedFeatures(
            features=np.load(paths.feature_file, mmap_mode="r"),
            targets=np.load(paths.targets_file),
            indices=np.load(paths.indices_file),
        )

    @classmethod
    def _shards(cls, input_dir: str, split: str, layer: str) -> Iterator[ExtractedFeatures]:
        if _is_store(input_dir):
            yield from _store_rows(str(input_dir), layer)
            return
        paths = cls.get_shard_file_names(str(input_dir), split=split, layer=layer)
        if not paths:
            raise ValueError(f"No features found for {split} {layer}")
        for p in paths:
            yield cls.load_feature_shard(p)

    @classmethod
    def load_features(cls, input_dir: str, split: str, layer: str, flatten_features: bool = False) -> dict:
        if _is_store(input_dir):  # one shard whose indices are its rows 0..N-1: merging changes nothing
            shards = list(_store_rows(str(input_dir), layer))
            if not shards:
                raise ValueError(f"No features found for {split} {layer} ({input_dir} has no rows)")
            features = np.concatenate([sh.features for sh in shards])
            out = {"features": features, "targets": np.concatenate([sh.targets for sh in shards]),
                   "inds": np.concatenate([sh.indices for sh in shards])}
            if flatten_features:
                out["features"] = features.reshape(len(features), -1)
            return out
        feats, targets = {}, {}
        for shard in cls._shards(input_dir, split, layer):
            for idx in range(shard.num_samples):
                index = shard.indices[idx]
                feats[index] = np.asarray(shard.features[idx])
                targets[index] = shard.targets[idx]
        indices = np.array(sorted(targets))
        features = np.array([feats[i] for i in indices])
        targets_arr = np.array([targets[i] for i in indices])
        if flatten_features:
            features = features.reshape(len(indices), -1)
        return {"features": features, "targets": targets_arr, "inds": indices}

    @classmethod
    def sample_features(cls, input_dir: str, split: str, layer: str, num_samples: int, seed: int,
                        flatten_features: bool = False) -> dict:
        if num_samples < 0:
            return cls.load_features(input_dir, split, layer, flatten_features=flatten_features)
        features, targets, indices = [], [], []
        count = 0
        rng = np.random.default_rng(seed)
        for shard in cls._shards(input_dir, split, layer):
            for idx in range(shard.num_samples):
                count += 1
                if len(features) < num_samples:  # fill the reservoir
                    features.append(np.array(shard.features[idx]))
                    targets.append(shard.targets[idx])
                    indices.append(shard.indices[idx])
                else:  # replace with probability num_samples / count
                    pos = rng.integers(low=0, high=count)
                    if pos < num_samples:
                        features[pos] = np.array(shard.features[idx])
                        targets[pos] = shard.targets[idx]
                        indices[pos] = shard.indices[idx]
        features_arr, targets_arr, indices_arr = np.stack(features), np.stack(targets), np.stack(indices)
        order = np.argsort(indices_arr)
        indices_arr, features_arr, targets_arr = indices_arr[order], features_arr[order], targets_arr[order]
        if flatten_features:
            features_arr = features_arr.reshape(len(indices_arr), -1)
        return {"features": features_arr, "targets": targets_arr, "inds": indices_arr}


def export_vissl_npy(path: str, out: str, split: str = "train") -> int:
    """Every fixed-size float field of the store as one VISSL layer: rank0_chunk0_{split}_{field}_*.npy, streamed
    row-chunk by row-chunk into memory-mapped .npy files; {split}_image_ids.txt maps index -> image id."""
    from visfeat.store.reader import FeatureStore, iter_rows

    if not re.fullmatch(r"[A-Za-z0-9.\-]+", split):
        raise ValueError(f"split {split!r}: letters, digits, '.', '-' only (VISSL splits are train/test)")
    split = split.lower()  # VISSL lower-cases the split in file names
    store = FeatureStore(path)
    specs = [s for s in store.specs if not s.ragged and np.dtype(s.dtype).kind == "f"]
    if not specs:
        raise ValueError(f"vissl-npy needs fixed-size float fields; {path} has {[s.name for s in store.specs]}")
    n = len(store)
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    inds = np.arange(n, dtype=np.int64)
    mms = {}
    for s in specs:
        base = dest / f"rank0_chunk0_{split}_{s.name}"
        np.save(f"{base}_inds.npy", inds)
        np.save(f"{base}_targets.npy", inds.reshape(n, 1))
        mms[s.name] = np.lib.format.open_memmap(f"{base}_features.npy", mode="w+", dtype=np.float32,
                                                shape=(n, *s.shape))
    ids: list[str] = []
    a = 0
    for chunk_ids, _, _, fields, _ in iter_rows(store):
        b = a + len(chunk_ids)
        for s in specs:
            mms[s.name][a:b] = fields[s.name]
        ids += chunk_ids
        a = b
    for mm in mms.values():
        mm.flush()
    mms.clear()
    (dest / f"{split}_image_ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    store.close()
    return n
