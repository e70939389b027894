"""`merge: virtual` (store/merge.py merge_virtual, store/vds.py): the merged store maps its fields onto the shard stores as HDF5 virtual
datasets and must read exactly as a copy merge through every reader; moving the results folder keeps it working;
a missing or changed shard is a clear error, never HDF5 fill values."""
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

import visfeat
from visfeat.extractors.registry import get_preset, resolve_options
from visfeat.interop.compare import compare
from visfeat.interop.exporters import EXPORTERS, export
from visfeat.store.format import SOURCES, FieldSpec, StoreError
from visfeat.store.inspect import describe
from visfeat.store.merge import merge, merge_virtual
from visfeat.store.reader import iter_rows
from visfeat.store.writer import StoreWriter

SMALL = {"C": 6, "D": 5}  # the presets' named dims, small: the layouts are the presets', the sizes tiny
KINDS = {"regions": "vinvl-x152c4",  # ragged regions incl. (K, 16) attribute lists
         "cells": "gridfeats-r50",  # a ragged grid of H x W cells + grid_hw: rows read back as (H, W, C)
         "fixed": "clip-vit-b32"}  # global (D,) + grid (7, 7, C)
SHARD_IMAGES = (3, 0, 4, 2)  # shard 1 has only failures


def preset_specs(preset: str) -> list[FieldSpec]:
    return [FieldSpec(f.name, tuple(SMALL.get(d, d) for d in f.shape), f.dtype, f.ragged)
            for f in get_preset(preset).outputs]


def write_shard(path: Path, preset: str, ids: list[str], failed: list[str], seed: int) -> None:
    """A shard store as an extraction writes it: the preset's fields with real (random) arrays."""
    rng = np.random.default_rng(seed)
    specs = preset_specs(preset)
    n = len(ids)
    hw = rng.integers(1, 4, (n, 2)).astype(np.int32)
    counts = {"regions": rng.integers(0, 4, n), "cells": hw[:, 0] * hw[:, 1]}
    values = {}
    for s in specs:
        rows = int(counts[s.ragged].sum()) if s.ragged else n
        if s.name == "boxes":
            xy = rng.uniform(0, 50, (rows, 2)).astype(np.float32)
            values[s.name] = np.concatenate([xy, xy + rng.uniform(1, 30, (rows, 2)).astype(np.float32)], 1)
        elif s.name == "grid_hw":
            values[s.name] = hw
        elif s.name == "num_boxes":
            values[s.name] = counts["regions"]
        elif np.dtype(s.dtype).kind == "i":
            values[s.name] = rng.integers(-1, 10, (rows, *s.shape)).astype(s.dtype)
        else:
            values[s.name] = rng.normal(size=(rows, *s.shape)).astype(s.dtype)
    attrs = {"preset": preset, "extractor": preset, "config": json.dumps(resolve_options(preset)),
             "weights_sha256": "0" * 64}
    w = StoreWriter(path, specs, attrs)
    digest = [hashlib.sha256(i.encode()).hexdigest() for i in ids]
    w.append(ids, [f"images/{i}.jpg" for i in ids], rng.integers(60, 90, (n, 2)), values,
             {g: counts[g] for g in {s.ragged for s in specs if s.ragged}}, sha256=digest)
    w.add_failures(failed, ["undecodable: cannot identify image file"] * len(failed),
                   [hashlib.sha256(f.encode()).hexdigest() for f in failed])
    w.close()


def write_shards(folder: Path, preset: str, sizes=SHARD_IMAGES) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    shards, k = [], 0
    for i, n in enumerate(sizes):
        ids = [f"img{k + j:03d}" for j in range(n)]
        k += n
        failed = [f"bad{i}"] if i in (1, 2) else []
        write_shard(folder / f"{i}.h5", preset, ids, failed, seed=i)
        shards.append(folder / f"{i}.h5")
    return shards


def merged_pair(results: Path, preset: str) -> tuple[Path, Path]:
    """The workflow's layout: results/ds/{name}.h5 beside results/ds/{name}/shards/{i}.h5."""
    shards = write_shards(results / "ds/x/shards", preset)
    merge(shards, results / "ds/copy.h5")
    merge_virtual(shards, results / "ds/x.h5")
    return results / "ds/copy.h5", results / "ds/x.h5"


def same_rows(a, b, skip=("created", "merge")) -> None:
    """Two stores as visfeat.open reads them: ids, failures, every row's every array, attributes (but `skip`)."""
    sa, sb = visfeat.open(a), visfeat.open(b)
    assert sa.ids == sb.ids and sa.failed == sb.failed and sa.specs == sb.specs and len(sa) == len(sb) > 0
    assert {k: v for k, v in sa.attrs.items() if k not in skip} == {k: v for k, v in sb.attrs.items() if k not in skip}
    for i in sa:
        ra, rb = sa[i], sb[i]
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k].dtype == rb[k].dtype and np.array_equal(ra[k], rb[k]), (i, k)


def same_datasets(a, b) -> None:
    """Every dataset of the copy, value for value and dtype, in the virtual store (which adds only its sources)."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert sorted(names_b) == sorted(names_a + [SOURCES] + [f"{SOURCES}/{k}" for k in ("bytes", "images", "path")])
        for n in names_a:
            if isinstance(fa[n], h5py.Dataset):
                assert fa[n].dtype == fb[n].dtype and fa[n].shape == fb[n].shape, n
                assert np.array_equal(fa[n][()], fb[n][()]), n


def same_tree(a: Path, b: Path) -> None:
    """Two export outputs (a file or a folder) hold the same data (the containers' timestamps aside)."""
    fa = sorted(p.relative_to(a) for p in a.rglob("*")) if a.is_dir() else [Path()]
    assert fa == (sorted(p.relative_to(b) for p in b.rglob("*")) if b.is_dir() else [Path()]) and fa
    for rel in fa:
        pa, pb = a / rel, b / rel
        if pa.is_dir():
            continue
        if pa.suffix == ".npz":
            with np.load(pa) as x, np.load(pb) as y:
                assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files), rel
        elif pa.suffix == ".npy":
            x, y = np.load(pa, allow_pickle=True), np.load(pb, allow_pickle=True)
            if x.dtype == object:  # MMF's _info.npy: a pickled dict
                x, y = x.item(), y.item()
                assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), rel
            else:
                assert np.array_equal(x, y), rel
        elif pa.suffix == ".h5":
            with h5py.File(pa) as x, h5py.File(pb) as y:
                na, nb = [], []
                x.visit(na.append)
                y.visit(nb.append)
                assert na == nb and na, rel
                for n in na:
                    if isinstance(x[n], h5py.Dataset):
                        assert np.array_equal(x[n][()], y[n][()]), (rel, n)
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel


@pytest.mark.parametrize("kind", list(KINDS))
def test_virtual_store_reads_as_the_copied_one_through_every_reader(kind, tmp_path):
    import torch

    preset = KINDS[kind]
    copy, virt = merged_pair(tmp_path / "results", preset)
    assert visfeat.open(virt).virtual and not visfeat.open(copy).virtual
    with h5py.File(virt) as f:
        fields = [s.name for s in visfeat.open(virt).specs]
        assert all(f[name].is_virtual for name in fields) and not f["image_id"].is_virtual
        assert all(not os.path.isabs(m.file_name) for name in fields for m in f[name].virtual_sources())
    same_datasets(copy, virt)
    same_rows(copy, virt)
    # streaming (exporters, k-means) in a chunk that straddles shards
    for (ia, pa, ha, fa, ca), (ib, pb, hb, fb, cb) in zip(iter_rows(visfeat.open(copy), 2),
                                                          iter_rows(visfeat.open(virt), 2), strict=True):
        assert (ia, pa) == (ib, pb) and np.array_equal(ha, hb)
        assert all(np.array_equal(fa[k], fb[k]) for k in fa) and all(np.array_equal(ca[k], cb[k]) for k in ca)
    # visfeat.dataset with DataLoader workers: each opens (and checks) the virtual store in its own process
    da, db = visfeat.dataset(copy), visfeat.dataset(virt)
    for x, y in zip(da, torch.utils.data.DataLoader(db, batch_size=None, num_workers=2), strict=True):
        assert x["image_id"] == y["image_id"] and all(torch.equal(x[k], y[k]) for k in x if k != "image_id")
    # every exporter: the same output, or the same refusal
    done = 0
    for fmt in EXPORTERS:
        try:
            export(fmt, str(copy), str(tmp_path / f"out-copy-{fmt}"))
        except ValueError as e:
            with pytest.raises(ValueError) as refused:
                export(fmt, str(virt), str(tmp_path / f"out-virt-{fmt}"))
            assert str(refused.value) == str(e).replace(str(copy), str(virt))
            continue
        export(fmt, str(virt), str(tmp_path / f"out-virt-{fmt}"))
        same_tree(tmp_path / f"out-copy-{fmt}", tmp_path / f"out-virt-{fmt}")
        done += 1
    # X-LXMERT's layouts refuse these stores (not 36 boxes per image; a 7x7 grid): interop/exporters.py
    assert done >= {"regions": 3, "cells": 0, "fixed": 2}[kind]
    # compare: the virtual store against the copy agrees perfectly, and equals the copy against itself
    assert compare(str(virt), str(copy)) == compare(str(copy), str(copy))
    # the report's figures
    from visfeat.analysis.report import feature_report

    for p, q in zip(feature_report(str(copy), str(tmp_path / "rep-copy"), weights_root=str(tmp_path)),
                    feature_report(str(virt), str(tmp_path / "rep-virt"), weights_root=str(tmp_path)), strict=True):
        assert p.name == q.name and p.read_bytes() == q.read_bytes(), p.name
    # k-means: the same sample, centroids and codes
    from visfeat.analysis import kmeans

    field = {"regions": "features", "cells": "grid", "fixed": "grid"}[kind]
    for s in ("copy", "virt"):
        kmeans.train([str({"copy": copy, "virt": virt}[s])], str(tmp_path / f"km-{s}.h5"), field=field, k=3,
                     niter=5, seed=1, gpu=False)
        kmeans.assign(str({"copy": copy, "virt": virt}[s]), str(tmp_path / f"km-{s}.h5"),
                      str(tmp_path / f"codes-{s}.h5"), gpu=False)
    with h5py.File(tmp_path / "km-copy.h5") as a, h5py.File(tmp_path / "km-virt.h5") as b:
        assert np.array_equal(a["centroids"][()], b["centroids"][()])
    same_rows(tmp_path / "codes-copy.h5", tmp_path / "codes-virt.h5",
              skip=("created", "source_store", "kmeans_settings"))  # these two name their input files
    assert "merge:      virtual: fields read from 4 shard files (0 missing)" in describe(str(virt))
    assert "merge:" not in describe(str(copy))


def test_moving_the_results_folder_keeps_a_virtual_store_working(tmp_path, monkeypatch):
    copy, virt = merged_pair(tmp_path / "results", KINDS["regions"])
    rows = {i: r for i, r in visfeat.open(virt).items()}
    moved = tmp_path / "elsewhere/renamed"
    moved.parent.mkdir()
    shutil.move(tmp_path / "results", moved)
    monkeypatch.chdir(tmp_path)  # neither the old nor the new folder: HDF5 resolves against the store's own folder
    s = visfeat.open(moved / "ds/x.h5")
    assert sorted(rows) == sorted(s)
    for i, r in rows.items():
        assert all(np.array_equal(r[k], s[i][k]) for k in r)
    same_rows(moved / "ds/copy.h5", moved / "ds/x.h5")
    monkeypatch.chdir(moved / "ds/x")  # opened by a relative name from a folder below it
    same_rows(Path("../copy.h5"), Path("../x.h5"))


def test_a_missing_or_changed_shard_is_a_clear_error_never_fill_values(tmp_path, monkeypatch):
    copy, virt = merged_pair(tmp_path / "results", KINDS["fixed"])
    opened = visfeat.open(virt)
    first = opened.row(0)
    shard = tmp_path / "results/ds/x/shards/2.h5"
    kept = tmp_path / "kept.h5"
    shard.rename(kept)
    with pytest.raises(StoreError, match=f"1 missing, e.g. {shard}"):
        visfeat.open(virt)
    with pytest.raises(StoreError, match="missing"):  # a store handed to another process (DataLoader worker)
        pickle.loads(pickle.dumps(opened)).row(0)
    with pytest.raises(StoreError, match="missing"):
        visfeat.dataset(virt)
    assert "1 missing" in describe(str(virt))
    # HDF5 itself would read a file of the same relative name from the current directory: refused all the same
    decoy = tmp_path / "cwd/x/shards/2.h5"
    decoy.parent.mkdir(parents=True)
    shutil.copy(kept, decoy)
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(StoreError, match="missing"):
        visfeat.open(virt)
    # and what HDF5 gives without the check: the fill value (NaN for floats), not an error
    with h5py.File(virt) as f:
        os.remove(decoy)
        assert np.isnan(f["global"][3:7]).all() and np.array_equal(f["global"][0], first["global"])
    # a shard re-extracted since the merge (other rows, other size): refused, merge again
    write_shard(shard, KINDS["fixed"], ["img003", "img004"], [], seed=9)
    with pytest.raises(StoreError, match=f"shard file {shard} has changed since"):
        visfeat.open(virt)
    kept.replace(shard)
    same_rows(copy, virt)


def test_virtual_merge_validates_as_the_copy_merge(tmp_path):
    preset = KINDS["regions"]
    shards = write_shards(tmp_path / "s", preset)
    ids = [visfeat.open(s).ids + [f.decode() for f in h5py.File(s)["failed/image_id"][()]] for s in shards]
    assert merge_virtual(shards, tmp_path / "ok.h5", expected=ids) == {"images": 9, "failed": 2}
    with pytest.raises(StoreError, match="1 manifest ids missing from shard 2"):
        merge_virtual(shards, tmp_path / "m1.h5", expected=[*ids[:2], ids[2] + ["nope"], *ids[3:]])
    with pytest.raises(StoreError, match="ids of shard 0 .* not in the manifest"):
        merge_virtual(shards, tmp_path / "m2.h5", expected=[ids[0][1:], *ids[1:]])
    with pytest.raises(StoreError, match="manifest has 3 shards, 4 shard stores"):
        merge_virtual(shards, tmp_path / "m2.h5", expected=ids[:3])
    with pytest.raises(StoreError, match="more than once"):
        merge_virtual([shards[0], shards[0]], tmp_path / "m3.h5")
    write_shard(tmp_path / "other.h5", "butd-r101-36", ["zz"], [], seed=5)
    with pytest.raises(StoreError, match="differs"):
        merge_virtual([shards[0], tmp_path / "other.h5"], tmp_path / "m4.h5")
    with h5py.File(tmp_path / "s/3.h5", "r+") as f:
        f["features"][0, 0] = np.inf
    with pytest.raises(StoreError, match="non-finite values in field features"):
        merge_virtual(shards, tmp_path / "m5.h5")
    with h5py.File(tmp_path / "s/3.h5", "r+") as f:
        f["features"][0, 0] = 0
        f.create_dataset("image_extra", data=np.zeros(2))  # a per-image dataset the other shards lack
    with pytest.raises(StoreError, match=r"datasets \['image_extra'\] differ"):
        merge_virtual(shards, tmp_path / "m6.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5", "other.h5", "s"]  # no temporary left behind
    # every per-image dataset a shard has is copied, whatever its name (here one no writer knows of)
    for k, s in enumerate(shards[:3]):
        with h5py.File(s, "r+") as f:
            f.create_dataset("image_extra", data=np.arange(SHARD_IMAGES[k]) + 10.0 * k)
    merge_virtual(shards, tmp_path / "extra.h5")
    with h5py.File(tmp_path / "extra.h5") as m:
        for name in ("image_extra", "image_sha256", "image_path", "failed/sha256", "failed/reason"):
            parts = []
            for s in shards:
                with h5py.File(s) as f:
                    parts.append(f[name][()])
            assert np.array_equal(m[name][()], np.concatenate(parts)), name
        assert m["image_sha256"][0].decode() == hashlib.sha256(b"img000").hexdigest()
    # every image failed: an empty store, as the copy merge writes it
    only_failed = write_shards(tmp_path / "f", preset, sizes=(0, 0))
    merge(only_failed, tmp_path / "fc.h5")
    merge_virtual(only_failed, tmp_path / "fv.h5")
    a, b = visfeat.open(tmp_path / "fc.h5"), visfeat.open(tmp_path / "fv.h5")
    assert len(a) == len(b) == 0 and a.failed == b.failed == [("bad1", "undecodable: cannot identify image file")]


def test_reads_spanning_more_shards_than_the_open_file_limit(tmp_path):
    """HDF5 holds one descriptor per source file a read touches and returns fill values past `ulimit -n`: opening a
    virtual store raises the soft limit (to the hard one) so a whole-field read of 150 shards under a soft limit
    of 64 returns the data."""
    folder = tmp_path / "ds/x/shards"
    shards = write_shards(folder, KINDS["fixed"], sizes=(1,) * 150)
    merge(shards, tmp_path / "ds/copy.h5")
    merge_virtual(shards, tmp_path / "ds/x.h5")
    code = (
        "import resource, sys, numpy as np, h5py, visfeat\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "raw = h5py.File(sys.argv[1])['global'][()]\n"
        "s = visfeat.open(sys.argv[1])\n"
        "opened = s.h5['global'][()]\n"
        "ref = h5py.File(sys.argv[2])['global'][()]\n"
        "print(int(np.isnan(raw).any(1).sum()), bool(np.array_equal(opened, ref)))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ds/x.h5"), str(tmp_path / "ds/copy.h5")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 0 and out[1] == "True", out  # plain h5py under the low limit: fill values


def test_random_reads_hold_a_bounded_number_of_shard_files_open(tmp_path):
    """HDF5 keeps every shard file a virtual dataset has read from open until it closes: `FeatureStore.row` closes
    its fields past ShardWindow.OPEN_SHARDS shard files, so random reads over 150 shards stay bounded."""
    from visfeat.store.vds import ShardWindow

    shards = write_shards(tmp_path / "ds/x/shards", KINDS["regions"], sizes=(2,) * 150)
    merge(shards, tmp_path / "ds/copy.h5")
    merge_virtual(shards, tmp_path / "ds/x.h5")
    c, v = visfeat.open(tmp_path / "ds/copy.h5"), visfeat.open(tmp_path / "ds/x.h5")
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before, most = fds(), 0
    for i in np.random.default_rng(0).permutation(len(v)):
        a, b = c.row(int(i)), v.row(int(i))
        assert all(np.array_equal(a[k], b[k]) for k in a)
        most = max(most, fds())
    assert 0 < most - before <= ShardWindow.OPEN_SHARDS + 4, (before, most)
    # images without boxes: zero-row reads, which HDF5 2.0.0 refuses on a virtual dataset of 50+ mappings
    assert sum(len(v.row(i)["boxes"]) == 0 for i in range(len(v))) > 10
    for (ia, _, _, fa, _), (ib, _, _, fb, _) in zip(iter_rows(c, 1), iter_rows(v, 1), strict=True):
        assert ia == ib and all(np.array_equal(fa[k], fb[k]) for k in fa)


@pytest.mark.workflow
def test_workflow_merge_virtual_equals_merge_copy(tmp_path):
    """A real snakemake run with `merge: virtual` on the sample dataset; switching to `merge: copy` reruns only the
    merge, and the two stores read the same through visfeat.open."""
    from conftest import copy_workflow, snakemake

    wd = copy_workflow(tmp_path)
    cfg = yaml.safe_load((wd / "config/config.yaml").read_text())
    cfg["datasets"]["sample"]["merge"] = "virtual"
    cfg["kmeans"] = {}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(wd, "--cores", "2", "all_features")
    store = wd / "results/sample/effnet-lite0.h5"
    s = visfeat.open(store)
    assert s.virtual and len(s) == 8
    rows = {i: s[i] for i in s}
    failed = s.failed
    s.close()
    cfg["datasets"]["sample"]["merge"] = "copy"
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "--cores", "2", "all_features")
    assert "rule merge" in p.stdout + p.stderr and "rule extract" not in p.stdout + p.stderr
    c = visfeat.open(store)
    assert not c.virtual and sorted(c) == sorted(rows) and c.failed == failed
    for i, r in rows.items():
        assert r.keys() == c[i].keys() and all(np.array_equal(r[k], c[i][k]) for k in r), i


def test_config_key_defaults_to_copy_and_reaches_the_merge_command():
    from conftest import REPO

    from visfeat.workflow.args import WorkflowArgs
    from visfeat.workflow.config import ConfigError, validate_config

    schema = str(REPO / "workflow/schemas/config.schema.yaml")
    cfg = {"datasets": {"s": {"source": "sample", "shards": 3}, "v": {"source": "sample", "merge": "virtual"}},
           "extractors": {"effnet-lite0": {}}, "features": [{"datasets": ["s", "v"], "extractors": ["effnet-lite0"]}]}
    c = validate_config(cfg, schema)
    assert c["datasets"]["s"]["merge"] == "copy"
    args = WorkflowArgs(c, {"datasets": {}, "archives": {}})
    assert args.merge("s", "effnet-lite0") == "--shard-dir results/s/effnet-lite0/shards --shards 3 --mode copy"
    assert args.merge("v", "effnet-lite0").endswith("--shards 1 --mode virtual")
    cfg["datasets"]["v"]["merge"] = "links"
    with pytest.raises(ConfigError, match="config: datasets.v.merge: 'links' is not one of"):
        validate_config(cfg, schema)
