"""store/merge.py's copy merge reads shards through HDF5's own calls, strings as their stored bytes: the merged
store must hold every row, digest and failure as the shards do, whatever the chunk, and refuse what it refused."""
import h5py
import numpy as np
import pytest

from visfeat.store.format import FAILED_SHA256, IMAGE_SHA256, FieldSpec, StoreError
from visfeat.store.merge import merge
from visfeat.store.reader import FeatureStore, read_failures, read_rows
from visfeat.store.writer import StoreWriter

SPECS = [FieldSpec("global", (3,)), FieldSpec("boxes", (4,), ragged="regions")]


def _shard(path, ids, failed, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, len(ids))
    w = StoreWriter(path, SPECS, {"preset": "t", "extractor": "t", "config": "{}", "weights_sha256": ""})
    w.append(ids, [f"dir/{i}.jpg" for i in ids], rng.integers(1, 99, (len(ids), 2)),
             {"global": rng.normal(size=(len(ids), 3)).astype(np.float32),
              "boxes": rng.normal(size=(counts.sum(), 4)).astype(np.float32)}, {"regions": counts},
             [f"{k:064x}" if k % 2 else "" for k in range(len(ids))])
    w.add_failures([i for i, _ in failed], [r for _, r in failed], ["f" * 64] * len(failed))
    w.close()


def test_copy_merge_keeps_every_row_digest_and_failure_whatever_the_chunk(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    _shard(tmp_path / "0.h5", [f"é{i}" for i in range(5)], [("bad", "décodage")], 0)
    _shard(tmp_path / "1.h5", [], [("gone", "missing")], 1)
    _shard(tmp_path / "2.h5", ["z", "y", "x"], [], 2)
    with h5py.File(tmp_path / "2.h5", "r+") as h:  # a shard from before the content hashes
        del h[IMAGE_SHA256], h[FAILED_SHA256]
    shards = [tmp_path / f"{k}.h5" for k in range(3)]
    assert merge(shards, tmp_path / "a.h5") == {"images": 8, "failed": 2}
    merge(shards, tmp_path / "b.h5", chunk=2)
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    out = FeatureStore(tmp_path / "a.h5")
    got = read_rows(out, 0, len(out))
    want = [read_rows(s, 0, len(s)) for s in map(FeatureStore, shards)]
    assert got.ids == [i for r in want for i in r.ids] == [f"é{i}" for i in range(5)] + ["z", "y", "x"]
    assert got.paths == [p for r in want for p in r.paths] and got.sha256 == [d for r in want for d in r.sha256]
    assert got.sha256[5:] == ["", "", ""]
    for name in ("global", "boxes"):
        assert np.array_equal(got.fields[name], np.concatenate([r.fields[name] for r in want]))
    assert np.array_equal(got.hw, np.concatenate([r.hw for r in want]))
    assert read_failures(out) == [("bad", "décodage", "f" * 64), ("gone", "missing", "f" * 64)]


def test_a_shard_whose_format_is_not_the_writers_is_refused(tmp_path):
    _shard(tmp_path / "0.h5", ["a"], [], 0)
    _shard(tmp_path / "1.h5", ["b"], [], 1)
    with h5py.File(tmp_path / "1.h5", "r+") as h:  # fixed-length bytes: FeatureStore refuses
        h.attrs["format"] = np.bytes_(b"visfeat-features")
    with pytest.raises(StoreError, match="not a visfeat feature store"):
        merge([tmp_path / "0.h5", tmp_path / "1.h5"], tmp_path / "m.h5")
    with h5py.File(tmp_path / "1.h5", "r+") as h:
        h.attrs["config"] = '{"other": 1}'
        h.attrs["format"] = "visfeat-features"
    with pytest.raises(StoreError, match="attribute 'config' differs"):
        merge([tmp_path / "0.h5", tmp_path / "1.h5"], tmp_path / "m.h5")
