"""k-means: recovers known clusters, codes equal a direct faiss search, bounded sample, k refused when too large."""
import json
import pickle

import faiss
import h5py
import numpy as np
import pytest

import visfeat
from visfeat.analysis.kmeans import KMeansError, assign, count_vectors, sample_vectors, train
from visfeat.store.format import FieldSpec
from visfeat.store.writer import StoreWriter

K, D, H, W = 8, 32, 4, 4


def _clustered_store(path, n_images, seed):
    """Grid features whose cells come from K well-separated Gaussian clusters; returns (vectors, labels)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(0, 10, (K, D)).astype(np.float32)
    labels = rng.integers(0, K, (n_images, H, W))
    grid = centers[labels] + rng.normal(0, 0.5, (n_images, H, W, D)).astype(np.float32)
    w = StoreWriter(path, [FieldSpec("grid", (H, W, D))], {"preset": "t", "extractor": "t", "config": "{}"})
    ids = [f"img{seed}_{i:04d}" for i in range(n_images)]
    w.append(ids, [f"{i}.jpg" for i in ids], np.tile([[8, 8]], (n_images, 1)), {"grid": grid})
    w.close()
    return grid.reshape(-1, D), labels.reshape(-1)


def test_recovers_known_clusters_and_codes_equal_faiss(tmp_path):
    x, y = _clustered_store(tmp_path / "train.h5", 200, seed=1)
    # k = 2 x the true clusters: a found cluster must not straddle two true ones (k-means' random init can merge
    # two true clusters when k equals their number; over-clustering makes purity a test of the code, not of luck)
    res = train([str(tmp_path / "train.h5")], str(tmp_path / "c.h5"), k=2 * K, niter=20, seed=3,
                npy=str(tmp_path / "c.npy"), name="t")
    assert res["vectors_available"] == 200 * H * W and res["empty_clusters"] == 0
    with h5py.File(tmp_path / "c.h5") as f:
        centroids = f["centroids"][()]
        assert 1 <= len(f["objective"]) <= 20  # faiss stops early once converged
        assert f["cluster_sizes"][()].sum() == res["vectors_trained"] == 200 * H * W  # all: under the k x 256 bound
        assert json.loads(f.attrs["settings"])["k"] == 2 * K
    assert np.array_equal(np.load(tmp_path / "c.npy"), centroids)

    tx, ty = _clustered_store(tmp_path / "target.h5", 50, seed=2)
    assert assign(str(tmp_path / "target.h5"), str(tmp_path / "c.h5"), str(tmp_path / "codes.h5"),
                  pickle_path=str(tmp_path / "codes.pkl")) == 50
    s = visfeat.open(tmp_path / "codes.h5")
    codes = np.stack([s.row(i)["codes"] for i in range(len(s))]).reshape(-1)
    # purity: each found cluster is (almost) one true cluster
    purity = sum(np.bincount(ty[codes == c]).max() for c in np.unique(codes)) / len(codes)
    assert purity >= 0.99, purity  # 1.0 seen (seed 3, 16 clusters found for 8 true ones)
    # the codes are exactly a direct faiss search with the same centroids
    assert len(np.unique(codes)) > K  # the clusters were really split, not collapsed
    index = faiss.IndexFlatL2(D)
    index.add(centroids)
    assert np.array_equal(codes, index.search(tx, 1)[1][:, 0])
    with open(tmp_path / "codes.pkl", "rb") as f:
        pk = pickle.load(f)
    assert pk[s.ids[3]].tolist() == s.row(3)["codes"].reshape(-1).tolist() and len(pk) == 50


def test_sample_is_bounded_seeded_and_uniform(tmp_path):
    x, _ = _clustered_store(tmp_path / "a.h5", 100, seed=5)
    paths = [str(tmp_path / "a.h5")]
    a = sample_vectors(paths, "grid", 300, seed=7)
    b = sample_vectors(paths, "grid", 300, seed=7)
    assert a.shape == (300, D) and np.array_equal(a, b)
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in a)  # real vectors, no duplicates invented
    assert len({r.tobytes() for r in a}) == 300
    assert not np.array_equal(a, sample_vectors(paths, "grid", 300, seed=8))
    # exactly the seeded choice over every store's vectors in order, reading only the chunks that hold one
    x2, _ = _clustered_store(tmp_path / "b.h5", 30, seed=6)
    both = [*paths, str(tmp_path / "b.h5")]
    every = np.concatenate([x, x2])
    want = every[np.sort(np.random.default_rng(4).choice(len(every), 50, replace=False))]
    assert np.array_equal(sample_vectors(both, "grid", 50, seed=4, chunk=3), want)
    assert np.array_equal(sample_vectors(both, "grid", len(every), seed=4, chunk=7), every)


def test_k_larger_than_vectors_refused_with_both_numbers(tmp_path):
    _clustered_store(tmp_path / "a.h5", 2, seed=1)
    assert count_vectors([str(tmp_path / "a.h5")], "grid") == 32
    with pytest.raises(KMeansError, match="k=100 is larger than the 32 training vectors"):
        train([str(tmp_path / "a.h5")], str(tmp_path / "c.h5"), k=100)
