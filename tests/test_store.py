import json

import h5py
import numpy as np
import pytest
import torch

import visfeat
from visfeat.engine.reuse import PreviousStore
from visfeat.store.format import (
    FAILED,
    FAILED_ID,
    FAILED_REASON,
    FAILED_SHA256,
    IMAGE_HW,
    IMAGE_ID,
    IMAGE_PATH,
    IMAGE_SHA256,
    WRITER_ATTRS,
    FieldSpec,
    StoreError,
    offsets_name,
)
from visfeat.store.merge import merge
from visfeat.store.reader import read_failures, read_rows
from visfeat.store.writer import StoreWriter

SPECS = [FieldSpec("global", (4,)), FieldSpec("boxes", (4,), ragged="regions"), FieldSpec("obj_id", (), "int64", "regions")]


def _write(path, ids, seed=0, failed=(), attrs=None, nan=False):
    rng = np.random.default_rng(seed)
    counts = np.array([len(i) for i in ids])  # ragged row count = id length, so it varies
    w = StoreWriter(path, SPECS, {"preset": "t", "extractor": "t", "config": "{}", "weights_sha256": "", **(attrs or {})})
    g = rng.normal(size=(len(ids), 4)).astype(np.float32)
    if nan:
        g[-1, 0] = np.nan
    w.append(list(ids), [f"{i}.jpg" for i in ids], np.tile([[10, 20]], (len(ids), 1)),
             {"global": g, "boxes": rng.normal(size=(counts.sum(), 4)).astype(np.float32),
              "obj_id": np.arange(counts.sum())}, {"regions": counts})
    w.add_failures([f for f, _ in failed], [r for _, r in failed])
    w.close()
    return g


def test_roundtrip_fixed_and_ragged(tmp_path):
    g = _write(tmp_path / "a.h5", ["a", "bb", "ccc"], failed=[("bad", "undecodable: x")])
    s = visfeat.open(tmp_path / "a.h5")
    assert list(s) == ["a", "bb", "ccc"] and len(s) == 3 and "bb" in s
    assert np.array_equal(s["bb"]["global"], g[1])
    assert s["ccc"]["boxes"].shape == (3, 4) and list(s["ccc"]["obj_id"]) == [3, 4, 5]
    assert s.row(-1)["obj_id"].tolist() == [3, 4, 5]
    assert s.failed == [("bad", "undecodable: x")]
    with pytest.raises(KeyError):
        s["zzz"]



def test_find_is_the_index_without_building_it(tmp_path, monkeypatch):
    """One lookup (`visfeat show`) reads the ids a chunk at a time instead of indexing them all."""
    from visfeat.store import reader

    ids = [f"id{k}" for k in range(7)] + ["é/ü"]  # utf-8 ids compare as stored
    _write(tmp_path / "a.h5", ids)
    monkeypatch.setattr(reader, "FIND_ROWS", 3)  # the hits and the miss span chunks
    s = visfeat.open(tmp_path / "a.h5")
    assert [s.find(i) for i in ids] == list(range(8)) and s.find("id") is None and s.find("zzz") is None
    assert s._index is None
    assert [s.find(i) for i in ids] == [s.index[i] for i in ids]


def test_merge_checks_the_manifest_shard_by_shard(tmp_path, capsys):
    """`visfeat merge --manifest`: shard store k against the manifest's shard k (read_shard), a tar source's
    manifest (no per-image rows) by uniqueness alone; hashes tell ids apart whatever their byte width."""
    import pandas as pd

    from visfeat.cli import main
    from visfeat.sources.manifest import read_shard, write_manifest
    from visfeat.store.merge import id_hashes

    ids = [f"im{i}" for i in range(30)]
    (tmp_path / "s").mkdir()
    write_manifest(pd.DataFrame({"image_id": ids, "path": [f"{i}.jpg" for i in ids]}), tmp_path / "m.parquet", 3)
    parts = [list(read_shard(tmp_path / "m.parquet", k)["image_id"]) for k in range(3)]
    for k, part in enumerate(parts):
        _write(tmp_path / f"s/{k}.h5", part[1:], seed=k, failed=[(part[0], "empty file")] if part else ())
    args = ["merge", "--manifest", str(tmp_path / "m.parquet"), "--shard-dir", str(tmp_path / "s"), "--shards", "3"]
    assert main([*args, "--out", str(tmp_path / "ok.h5")]) == 0
    assert sorted(visfeat.open(tmp_path / "ok.h5").ids + [i for i, _ in visfeat.open(tmp_path / "ok.h5").failed]) \
        == sorted(ids)
    assert min(len(part) for part in parts) > 2
    moved = 1
    _write(tmp_path / f"s/{moved}.h5", parts[moved][2:], seed=moved)  # one manifest id of the shard left out
    assert main([*args, "--out", str(tmp_path / "bad.h5")]) == 2
    assert f"manifest ids missing from shard {moved}" in capsys.readouterr().err
    tars = pd.DataFrame({"tar": ["a.tar", "b.tar", "c.tar"], "shard": [0, 1, 2]})
    write_manifest(tars, tmp_path / "t.parquet", 3)
    _write(tmp_path / f"s/{moved}.h5", parts[moved][1:], seed=moved)
    targs = [*args[:1], "--manifest", str(tmp_path / "t.parquet"), *args[3:]]
    assert main([*targs, "--out", str(tmp_path / "t.h5")]) == 0
    _write(tmp_path / f"s/{moved}.h5", parts[(moved + 1) % 3][1:], seed=moved)  # another shard's ids
    assert main([*targs, "--out", str(tmp_path / "t2.h5")]) == 2
    assert "appears more than once" in capsys.readouterr().err
    assert id_hashes([b"a", b"abcdef"])[0] == id_hashes([b"a"])[0] != id_hashes([b"b"])[0]


def test_merge_streams_the_manifest_shard_by_shard_as_read_shard_cuts_it(tmp_path):
    """The merge's manifest ids (`iter_shard_ids`: one pass over the file) are `read_shard`'s, shard for shard:
    across parquet batches (more rows than one batch) and with empty shards."""
    import pandas as pd

    from visfeat.sources.manifest import iter_shard_ids
    from visfeat.sources.manifest import read_shard, write_manifest

    for n, shards in ((70_000, 3), (5, 40)):
        ids = [f"x{i}" for i in range(n)]
        path = tmp_path / f"{n}.parquet"
        write_manifest(pd.DataFrame({"image_id": ids, "path": ids}), path, shards)
        got = list(iter_shard_ids(str(path), shards))
        assert got == [list(read_shard(path, k)["image_id"]) for k in range(shards)]
        assert sum(map(len, got)) == n and (n > 5 or got.count([]) > 30)

def test_merge_validates(tmp_path):
    _write(tmp_path / "0.h5", ["a", "bb"], 0, failed=[("x", "empty file")])
    _write(tmp_path / "1.h5", ["ccc"], 1)
    res = merge([tmp_path / "0.h5", tmp_path / "1.h5"], tmp_path / "m.h5", expected=[["a", "x", "bb"], ["ccc"]])
    assert res == {"images": 3, "failed": 1}
    m = visfeat.open(tmp_path / "m.h5")
    assert list(m) == ["a", "bb", "ccc"] and m["ccc"]["obj_id"].tolist() == [0, 1, 2]
    assert visfeat.open(tmp_path / "1.h5")["ccc"]["boxes"].tolist() == m["ccc"]["boxes"].tolist()

    with pytest.raises(StoreError, match="missing"):
        merge([tmp_path / "0.h5"], tmp_path / "m2.h5", expected=[["a", "bb", "x", "ccc"]])
    with pytest.raises(StoreError, match="more than once"):
        merge([tmp_path / "0.h5", tmp_path / "0.h5"], tmp_path / "m3.h5")
    with pytest.raises(StoreError, match="more than once"):  # a failure in one shard, a row in another
        _write(tmp_path / "2.h5", ["x"])
        merge([tmp_path / "0.h5", tmp_path / "1.h5", tmp_path / "2.h5"], tmp_path / "m3.h5")
    _write(tmp_path / "nan.h5", ["q"], nan=True)
    with pytest.raises(StoreError, match="non-finite.*'q'"):
        merge([tmp_path / "nan.h5"], tmp_path / "m4.h5")
    _write(tmp_path / "other.h5", ["r"], attrs={"config": json.dumps({"x": 1})})
    with pytest.raises(StoreError, match="config"):
        merge([tmp_path / "1.h5", tmp_path / "other.h5"], tmp_path / "m5.h5")
    assert not any(p.name.startswith(".m") for p in tmp_path.iterdir())  # no temporary left behind
    assert not (tmp_path / "m2.h5").exists()


def test_torch_dataset_with_workers(tmp_path):
    _write(tmp_path / "a.h5", [f"id{i}" for i in range(20)])
    ds = visfeat.dataset(str(tmp_path / "a.h5"), fields=["global"])
    assert torch.equal(ds["id3"]["global"], ds[3]["global"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    rows = torch.cat([b["global"] for b in loader])
    assert rows.shape == (20, 4)
    assert torch.equal(rows[7], torch.from_numpy(visfeat.open(tmp_path / "a.h5")["id7"]["global"]))


def test_the_file_holds_exactly_the_names_format_declares(tmp_path):
    _write(tmp_path / "a.h5", ["a", "bb"], failed=[("x", "empty file")])
    with h5py.File(tmp_path / "a.h5", "r") as h:
        names: list[str] = []
        h.visit(names.append)
        attrs = set(h.attrs)
    assert set(names) == {IMAGE_ID, IMAGE_PATH, IMAGE_HW, IMAGE_SHA256, FAILED, FAILED_ID, FAILED_REASON,
                          FAILED_SHA256, offsets_name("regions"), *(s.name for s in SPECS)}
    assert set(WRITER_ATTRS) | {"preset", "extractor", "config", "weights_sha256"} == attrs


def test_a_store_from_before_content_hashes_reads_empty_digests(tmp_path):
    """Stores written before `image_sha256` and `failed/sha256` existed: every reader gives "" (content unknown),
    so an incremental rerun extracts those images again rather than trusting them."""
    _write(tmp_path / "old.h5", ["a", "bb", "ccc"], failed=[("x", "empty file")])
    with h5py.File(tmp_path / "old.h5", "r+") as h:
        del h[IMAGE_SHA256], h[FAILED_SHA256]
    s = visfeat.open(tmp_path / "old.h5")
    assert read_rows(s, 1, 3).sha256 == ["", ""] and read_failures(s) == [("x", "empty file", "")]
    assert s["bb"]["obj_id"].tolist() == [1, 2]
    prev = PreviousStore(tmp_path / "old.h5")
    assert prev.rows["ccc"] == (2, "ccc.jpg", "") and prev.failed == {"x": ("empty file", "")}
    prev.close()
