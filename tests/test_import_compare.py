"""Published layouts: export -> import gives the store back; `compare` reports exactly the differences made."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import visfeat
from visfeat.interop.compare import compare
from visfeat.interop.exporters import export
from visfeat.interop.importers import import_features
from visfeat.store.format import FieldSpec
from visfeat.store.writer import writing

FIELDS = ("features", "boxes", "obj_id", "obj_conf", "attr_id", "attr_conf", "num_boxes", "image_hw")


def region_store(path, rows: dict[str, dict], paths: dict[str, str] | None = None) -> None:
    dim = next(iter(rows.values()))["features"].shape[1]
    specs = [FieldSpec("features", (dim,), ragged="regions"), FieldSpec("boxes", (4,), ragged="regions"),
             FieldSpec("obj_id", (), "int64", ragged="regions"), FieldSpec("obj_conf", (), ragged="regions"),
             FieldSpec("attr_id", (), "int64", ragged="regions"), FieldSpec("attr_conf", (), ragged="regions"),
             FieldSpec("num_boxes", (), "int64")]
    with writing(path, specs, {"preset": "butd-r101-36", "config": "{}"}) as w:
        ids = list(rows)
        cat = {k: np.concatenate([rows[i][k] for i in ids]) for k in FIELDS[:6]}
        counts = np.asarray([len(rows[i]["boxes"]) for i in ids], np.int64)
        paths = [(paths or {}).get(i, f"{i}.jpg") for i in ids]
        w.append(ids, paths, np.asarray([rows[i]["image_hw"] for i in ids], np.int32),
                 {**cat, "num_boxes": counts}, {"regions": counts})


def random_rows(seed: int, n: int = 5, boxes: int | None = None, dim: int = 8) -> dict[str, dict]:
    """`n` images of `boxes` regions each (default: 3 to 11) with `dim` features per region."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(n):
        m = int(rng.integers(3, 12)) if boxes is None else boxes
        xy = rng.uniform(0, 200, (m, 2)).astype(np.float32)
        out[f"img{k}"] = {"features": rng.normal(size=(m, dim)).astype(np.float32),
                          "boxes": np.concatenate([xy, xy + rng.uniform(10, 80, (m, 2)).astype(np.float32)], 1),
                          "obj_id": rng.integers(0, 1600, m), "obj_conf": rng.uniform(size=m).astype(np.float32),
                          "attr_id": rng.integers(0, 400, m), "attr_conf": rng.uniform(size=m).astype(np.float32),
                          "image_hw": (int(rng.integers(100, 600)), int(rng.integers(100, 600)))}
    return out


@pytest.mark.parametrize("fmt,ext", [("lxmert-h5", "h5"), ("lxmert-tsv", "tsv")])
def test_export_then_import_gives_every_field_back(tmp_path, fmt, ext):
    rows = random_rows(0)
    region_store(tmp_path / "a.h5", rows)
    export(fmt, str(tmp_path / "a.h5"), str(tmp_path / f"pub.{ext}"))
    assert import_features(fmt, str(tmp_path / f"pub.{ext}"), str(tmp_path / "b.h5"), preset="butd-r101-36",
                           source_url="https://example.org/pub") == 5
    a, b = visfeat.open(tmp_path / "a.h5"), visfeat.open(tmp_path / "b.h5")
    assert sorted(a) == sorted(b)
    for i in a:
        for k in FIELDS:
            np.testing.assert_array_equal(b[i][k], a[i][k], err_msg=f"{fmt} {i} {k}")
    assert b.attrs["source_url"] == "https://example.org/pub" and len(b.attrs["source_sha256"]) == 64


def test_xlxmert_boxes36_round_trip_carries_features_boxes_and_labels(tmp_path):
    rows = random_rows(2, boxes=36, dim=2048)  # X-LXMERT's shapes (exporters.XLXMERT_BOXES, XLXMERT_DIM)
    region_store(tmp_path / "a.h5", rows)
    export("xlxmert-boxes36", str(tmp_path / "a.h5"), str(tmp_path / "maskrcnn_valid_boxes36.h5"))
    assert import_features("xlxmert-boxes36", str(tmp_path / "maskrcnn_valid_boxes36.h5"), str(tmp_path / "b.h5"),
                           preset="vmb-x152") == 5
    a, b = visfeat.open(tmp_path / "a.h5"), visfeat.open(tmp_path / "b.h5")
    assert sorted(a) == sorted(b) and "obj_conf" not in {s.name for s in b.specs}  # no confidences in the layout
    for i in a:
        for k in ("features", "boxes", "obj_id", "num_boxes", "image_hw"):
            np.testing.assert_array_equal(b[i][k], a[i][k], err_msg=f"{i} {k}")


def test_xlxmert_grid8_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    grids = {f"COCO_val2014_{k:012d}": rng.normal(size=(8, 8, 2048)).astype(np.float32) for k in range(7)}
    with writing(tmp_path / "a.h5", [FieldSpec("grid", (8, 8, 2048))], {"preset": "grid8-x152", "config": "{}"}) as w:
        w.append(list(grids), [f"{k}.jpg" for k in grids], np.zeros((7, 2), np.int32),
                 {"grid": np.stack(list(grids.values()))}, {})
    export("xlxmert-grid8", str(tmp_path / "a.h5"), str(tmp_path / "maskrcnn_valid_grid8.h5"))
    import h5py

    with h5py.File(tmp_path / "maskrcnn_valid_grid8.h5") as f:  # as X-LXMERT's datasets read it
        assert sorted(f) == sorted(grids) and f[next(iter(grids))]["features"].shape == (8, 8, 2048)
    assert import_features("xlxmert-grid8", str(tmp_path / "maskrcnn_valid_grid8.h5"), str(tmp_path / "b.h5")) == 7
    b = visfeat.open(tmp_path / "b.h5")
    for k, g in grids.items():
        np.testing.assert_array_equal(b[k]["grid"], g)


def test_export_by_file_stem_and_import_by_id_style(tmp_path):
    """LXMERT's and X-LXMERT's COCO files name images by file stem (COCO_val2014_000000000042) where the registry's
    `coco` ids are numbers (42): `names="stem"` exports as the originals name them, and importing under the
    dataset's id_style gives the extraction's ids back, so `compare` matches image for image."""
    from visfeat.sources.folder import DatasetError

    rows = dict(zip(("42", "73", "391895"), random_rows(4, 3, boxes=36, dim=2048).values()))
    paths = {i: f"val2014/COCO_val2014_{int(i):012d}.jpg" for i in rows}
    region_store(tmp_path / "a.h5", rows, paths)  # as extracting coco_val2014 names them
    for fmt in ("lxmert-tsv", "xlxmert-boxes36"):
        export(fmt, str(tmp_path / "a.h5"), str(tmp_path / f"{fmt}.pub"), names="stem")
        import_features(fmt, str(tmp_path / f"{fmt}.pub"), str(tmp_path / "as_is.h5"))
        assert sorted(visfeat.open(tmp_path / "as_is.h5")) == sorted(p[8:-4] for p in paths.values())
        import_features(fmt, str(tmp_path / f"{fmt}.pub"), str(tmp_path / "b.h5"), id_style="coco")
        b = visfeat.open(tmp_path / "b.h5")
        np.testing.assert_array_equal(b["42"]["features"], rows["42"]["features"])
        res = compare(str(tmp_path / "a.h5"), str(tmp_path / "b.h5"))
        assert res["only_a"] == [] and res["only_b"] == [] and res["images"] == 3, fmt
    region_store(tmp_path / "twice.h5", {"42": rows["42"], "73": rows["73"]},
                 {"42": "val2014/COCO_val2014_000000000042.jpg", "73": "test2015/COCO_test2015_000000000042.jpg"})
    export("lxmert-h5", str(tmp_path / "twice.h5"), str(tmp_path / "twice.pub"), names="stem")
    with pytest.raises(DatasetError, match="both give image id '42'"):
        import_features("lxmert-h5", str(tmp_path / "twice.pub"), str(tmp_path / "c.h5"), id_style="coco")
    region_store(tmp_path / "clash.h5", {"a/x": rows["42"], "b/x": rows["73"]}, {"a/x": "a/x.jpg", "b/x": "b/x.jpg"})
    with pytest.raises(ValueError, match="one file stem 'x'"):
        export("lxmert-h5", str(tmp_path / "clash.h5"), str(tmp_path / "clash.pub"), names="stem")


def test_compare_reports_exactly_the_differences(tmp_path):
    rows = random_rows(1)
    region_store(tmp_path / "a.h5", rows)
    changed = {k: {f: np.array(v, copy=True) if f != "image_hw" else v for f, v in r.items()} for k, r in rows.items()}
    del changed["img4"]  # missing on one side
    changed["img0"]["features"][0] *= -1  # one feature flipped: cosine -1
    changed["img1"]["obj_id"][1] = (changed["img1"]["obj_id"][1] + 1) % 1600  # one label differs
    region_store(tmp_path / "b.h5", changed)
    res = compare(str(tmp_path / "a.h5"), str(tmp_path / "b.h5"))
    n_boxes = sum(len(r["boxes"]) for k, r in rows.items() if k != "img4")
    assert res["only_a"] == ["img4"] and res["only_b"] == [] and res["images"] == 4
    r = res["regions"]
    assert r["images_with_other_box_count"] == 0 and r["matched_iou_min"] == pytest.approx(1.0)
    assert r["feature_cosine_min"] == pytest.approx(-1.0)
    assert r["obj_id_agreement"] == pytest.approx(1 - 1 / n_boxes) and r["attr_id_agreement"] == 1.0
    same = compare(str(tmp_path / "a.h5"), str(tmp_path / "a.h5"))
    assert same["regions"]["feature_cosine_min"] == pytest.approx(1.0) and same["only_a"] == same["only_b"] == []
    out = subprocess.run([sys.executable, "-m", "visfeat", "compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"),
                          "--plot", str(tmp_path / "cmp.png")], check=True, capture_output=True, text=True).stdout
    assert "only in A: 1" in out and "obj_id_agreement" in out
    from PIL import Image

    assert Image.open(tmp_path / "cmp.png").size[0] >= 800  # two panels: IoU and cosine


@pytest.mark.workflow
def test_workflow_takes_published_features_when_configured(tmp_path):
    """`source: published`: the file is downloaded over 127.0.0.1 (sha256-checked, unzipped) and imported; no
    extraction runs, and the store equals the one the published file was made from."""
    import hashlib
    import io
    import zipfile

    import yaml
    from conftest import copy_workflow, snakemake
    from helpers.http_server import FileServer

    rows = random_rows(2)
    region_store(tmp_path / "orig.h5", rows)
    export("lxmert-tsv", str(tmp_path / "orig.h5"), str(tmp_path / "val_obj36.tsv"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.write(tmp_path / "val_obj36.tsv", "val_obj36.tsv")
    data = buf.getvalue()
    (tmp_path / "wd").mkdir()
    wd = copy_workflow(tmp_path / "wd")
    with FileServer({"/feat/val_obj36.zip": data}) as srv:
        url = srv.url + "/feat/val_obj36.zip"
        cfg = {
            "datasets": {"sample": {"source": "sample"}},
            "extractors": {"butd-r101-36": {}},
            "features": [{"datasets": ["sample"], "extractors": ["butd-r101-36"], "source": "published"}],
            "published": {"lxmert_val_obj36": {"dataset": "sample", "extractor": "butd-r101-36", "url": url,
                                               "format": "lxmert-tsv", "sha256": hashlib.sha256(data).hexdigest(),
                                               "member": "val_obj36.tsv"}},
        }
        (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
        p = snakemake(wd)
    assert "extract" not in p.stdout + p.stderr.replace("extractor", "")  # no extraction job ran
    a, b = visfeat.open(tmp_path / "orig.h5"), visfeat.open(wd / "results/sample/butd-r101-36.h5")
    assert sorted(a) == sorted(b)
    for i in a:
        for k in FIELDS:
            np.testing.assert_array_equal(b[i][k], a[i][k])
    assert b.attrs["source_url"] == url
    assert (wd / "results/report/sample/butd-r101-36/classes.png").exists()
    cfg["features"][0]["source"] = "published"
    cfg["published"]["lxmert_val_obj36"]["extractor"] = "clip-rn50"
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    bad = snakemake(wd, "-n", check=False)
    assert bad.returncode != 0 and "no `published` entry has dataset 'sample' and extractor 'butd-r101-36'" in (
        bad.stdout + bad.stderr)


@pytest.mark.workflow
def test_registry_published_entry_matches_dataset_source_preset_and_options(tmp_path):
    """LXMERT's val2014 obj36 TSV stands for coco_val2014 x butd-r101-10-100 at 36/36 boxes: planned (-n, no
    network) as download + import; the same preset at its 10-100 default is refused at start."""
    import yaml
    from conftest import copy_workflow, snakemake

    wd = copy_workflow(tmp_path)
    cfg = {"datasets": {"coco_val": {"source": "coco_val2014"}},
           "extractors": {"obj36": {"preset": "butd-r101-10-100", "min_boxes": 36, "max_boxes": 36}},
           "features": [{"datasets": ["coco_val"], "extractors": ["obj36"], "source": "published"}]}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", "-p", "results/coco_val/obj36.h5")
    out = p.stdout + p.stderr
    assert "download_published" in out and "import_published" in out and "rule extract" not in out
    assert "mscoco_imgfeat/val2014_obj36.zip" in out and "--id-style coco" in out  # COCO_val2014_..42 -> 42
    cfg["extractors"]["obj36"] = {"preset": "butd-r101-10-100"}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    bad = snakemake(wd, "-n", check=False)
    assert bad.returncode != 0 and "no `published` entry has dataset 'coco_val' and extractor 'obj36'" in (
        bad.stdout + bad.stderr)


@pytest.mark.workflow
def test_registry_xlxmert_grid8_and_boxes36_entries_plan_download_and_import(tmp_path):
    """X-LXMERT's published files: nlvr2 dev grid8 (grid8-x152) and boxes36 (vmb-x152 at 36 boxes), planned."""
    import yaml
    from conftest import copy_workflow, snakemake

    wd = copy_workflow(tmp_path)
    cfg = {"datasets": {"dev": {"source": "nlvr2_dev"}},
           "extractors": {"grid8-x152": {}, "b36": {"preset": "vmb-x152", "max_boxes": 36}},
           "features": [{"datasets": ["dev"], "extractors": ["grid8-x152", "b36"], "source": "published"}]}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", "-p", "results/dev/grid8-x152.h5", "results/dev/b36.h5")
    out = p.stdout + p.stderr
    assert "rule extract" not in out and out.count("rule import_published") == 2
    assert "NLVR2/maskrcnn_valid_grid8.h5" in out and "NLVR2/maskrcnn_valid_boxes36.h5" in out
    assert "--format xlxmert-grid8" in out and "--format xlxmert-boxes36" in out
