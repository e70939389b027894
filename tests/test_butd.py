"""Region detectors (butd-*): parity with py-bottom-up-attention, batching, forced boxes, exporters, layouts.

Parity fixtures (tests/fixtures/butd/, see its NOTE.md) come from running the original detectron2 fork on the
tiny random weights `tiny_attr.pkl` (official pickle layout, reduced width) over scikit-image photos.
"""
from __future__ import annotations

import base64
import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers.photos import assert_same_regions, photo
from PIL import Image

import visfeat
from visfeat.engine.items import Item, folder_items
from visfeat.engine.loaders import aspect_order
from visfeat.engine.run import run_extraction

FIX = Path(__file__).parent / "fixtures" / "butd"
WEIGHTS = FIX / "tiny_attr.pkl"
PHOTOS = ("astronaut.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "coffee.png")
SELECTIONS = {  # fixture key: preset, options (perclass3636 = MILVLG --min-max-boxes 36,36: its argsort branch)
    "maxnms36": ("butd-r101-36", {}),
    "perclass10100": ("butd-r101-10-100", {}),
    "perclass3636": ("butd-r101-10-100", {"min_boxes": 36, "max_boxes": 36}),
}

needs_fixture = pytest.mark.skipif(not WEIGHTS.exists(), reason="parity fixture not generated")


@pytest.fixture(scope="module")
def reference():
    with np.load(FIX / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def run(ex, names: list[str], given: dict | None = None) -> list[dict]:
    batch = ex.collate([ex.preprocess(photo(n)) for n in names])
    batch["image_id"] = [Path(n).stem for n in names]
    if given is not None:
        ex.set_given_boxes(given)
    return ex.forward(batch)


# what the original's script recorded beside its outputs (its own bookkeeping, no field of ours)
REF_ONLY = ("nms_thresh", "proposal_index", "branch", "max_conf")


def ref_of(reference: dict, stem: str, sel: str) -> dict:
    p = f"{stem}/{sel}/"
    return {k[len(p):]: v for k, v in reference.items() if k.startswith(p) and k[len(p):] not in REF_ONLY}


@pytest.fixture(scope="module")
def alone():
    """preset -> photo -> output of that photo run on its own (shared by the parity and batching tests)."""
    cache: dict = {}

    def get(preset: str, **opts) -> dict:
        key = (preset, tuple(sorted(opts.items())))
        if key not in cache:
            ex = visfeat.load_extractor(preset, weights=str(WEIGHTS), device="cpu", **opts)
            cache[key] = {n: run(ex, [n])[0] for n in PHOTOS}
        return cache[key]

    return get


@needs_fixture
@pytest.mark.parametrize("sel", list(SELECTIONS))
def test_parity_with_py_bottom_up_attention(reference, alone, sel):
    preset, opts = SELECTIONS[sel]
    for name, out in alone(preset, **opts).items():
        assert_same_regions(out, ref_of(reference, Path(name).stem, sel), f"{sel} {name}")


@needs_fixture
def test_given_boxes_parity(reference):
    ex = visfeat.load_extractor("butd-r101-36", weights=str(WEIGHTS), device="cpu")
    given = {Path(n).stem: ref_of(reference, Path(n).stem, "given")["input_boxes"] for n in PHOTOS}
    outs = run(ex, list(PHOTOS), given)
    for name, out in zip(PHOTOS, outs):
        ref = ref_of(reference, Path(name).stem, "given")
        np.testing.assert_allclose(out["boxes"], ref["input_boxes"], rtol=1e-6)
        a, b = out["features"], ref["features"]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() >= 0.999, name


@needs_fixture
@pytest.mark.parametrize("preset", ["butd-r101-36", "butd-r101-10-100"])
def test_batch_of_mixed_sizes_equals_alone(alone, preset):
    ex = visfeat.load_extractor(preset, weights=str(WEIGHTS), device="cpu")
    ex.group_sizes = False  # one padded forward (the accelerators' path; the CPU runs each image alone)
    batched = run(ex, list(PHOTOS))
    for name, out in zip(PHOTOS, batched):
        assert_same_regions(out, alone(preset)[name], f"{preset} {name} batched vs alone")


def test_aspect_order_groups_shapes_and_is_stable(tmp_path):
    sizes = [(300, 200), (200, 300), (640, 480), (100, 400), (500, 500), (480, 640)] * 3
    items = []
    for k, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h)).save(tmp_path / f"{k:02d}.png")
        items.append(Item(f"{k:02d}", f"{k:02d}.png", str(tmp_path / f"{k:02d}.png")))
    items.append(Item("gone", "gone.png", str(tmp_path / "gone.png")))
    order = aspect_order(items, window=12)
    assert sorted(i.image_id for i in order) == sorted(i.image_id for i in items)
    assert order == aspect_order(items, window=12)
    first = [sizes[int(i.image_id)][0] / sizes[int(i.image_id)][1] for i in order[:12]]
    assert first == sorted(first)  # one window sorted by w/h
    assert {i.image_id for i in order[:12]} == {f"{k:02d}" for k in range(12)}  # windows keep their items


def test_vocabularies_ship():
    from visfeat.extractors.vocab import words_for

    for preset in ("butd-r101-36", "butd-r101-10-100"):
        objs, attrs = words_for(preset)
        assert len(objs) == 1600 and len(attrs) == 400
        assert len(set(objs)) == 1600 and objs[:3] == ("yolk", "goal", "bathroom")
    assert words_for("clip-rn50") is None


@needs_fixture
def test_hf_unc_nlp_layout_loads_the_same(tmp_path):
    """unc-nlp/frcnn-vg-finetuned's pytorch_model.bin: the fork's names + num_batches_tracked + cell anchors."""
    with open(WEIGHTS, "rb") as f:
        sd = {k: torch.as_tensor(v) for k, v in pickle.load(f)["model"].items()}
    hf = dict(sd)
    for k in sd:
        if k.endswith(".norm.weight"):
            hf[k[: -len("weight")] + "num_batches_tracked"] = torch.tensor([0])
    ex = visfeat.load_extractor("butd-r101-36", weights=str(WEIGHTS), device="cpu")
    hf["proposal_generator.anchor_generator.cell_anchors.0"] = ex.model.proposal_generator.cell_anchors.clone()
    torch.save(hf, tmp_path / "pytorch_model.bin")
    ex2 = visfeat.load_extractor("butd-r101-36", weights=str(tmp_path / "pytorch_model.bin"), device="cpu")
    (a,), (b,) = run(ex, ["chelsea.png"]), run(ex2, ["chelsea.png"])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    hf["proposal_generator.anchor_generator.cell_anchors.0"] *= 2
    torch.save(hf, tmp_path / "other.bin")
    with pytest.raises(KeyError, match="cell anchors"):
        visfeat.load_extractor("butd-r101-36", weights=str(tmp_path / "other.bin"), device="cpu")
    del hf["roi_heads.box_predictor.cls_score.weight"]
    torch.save(hf, tmp_path / "broken.bin")
    with pytest.raises(KeyError, match="cls_score"):
        visfeat.load_extractor("butd-r101-36", weights=str(tmp_path / "broken.bin"), device="cpu")


@pytest.fixture(scope="module")
def region_store(tmp_path_factory):
    """A store from the real extraction path over four photos of different shapes + one broken file."""
    if not WEIGHTS.exists():
        pytest.skip("parity fixture not generated")
    d = tmp_path_factory.mktemp("regions")
    imgs = d / "images"
    imgs.mkdir()
    for n in PHOTOS[:4]:
        photo(n).save(imgs / (Path(n).stem + ".png"))
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    ex = visfeat.load_extractor("butd-r101-36", weights=str(WEIGHTS), device="cpu")
    run_extraction(ex, folder_items(imgs), d / "r.h5", batch_size=2, workers=1)
    return d / "r.h5", imgs


def test_store_holds_ragged_regions(region_store):
    path, _ = region_store
    s = visfeat.open(path)
    assert sorted(s) == ["astronaut", "chelsea", "hubble_deep_field", "rocket"]
    assert dict(s.failed).keys() == {"broken"}
    r = s["rocket"]
    assert r["features"].shape == (36, 256) and r["boxes"].shape == (36, 4) and int(r["num_boxes"]) == 36
    assert r["obj_id"].dtype == np.int64 and r["attr_id"].dtype == np.int64
    h, w = r["image_hw"]
    assert (h, w) == (427, 640)
    assert (r["boxes"][:, 2] <= w).all() and (r["boxes"][:, 3] <= h).all() and (r["boxes"] >= 0).all()


def test_lxmert_exports_read_back_like_their_loaders(region_store, tmp_path):
    from visfeat.interop.exporters import export

    path, _ = region_store
    s = visfeat.open(path)
    assert export("lxmert-h5", str(path), str(tmp_path / "val_boxes36.h5")) == 4
    assert export("lxmert-tsv", str(path), str(tmp_path / "val_obj36.tsv")) == 4
    # iglue / VL-T5: f[f"{img_id}/features"][...], img_h/img_w scalars
    with h5py.File(tmp_path / "val_boxes36.h5") as f:
        for image_id in s:
            g, want = f[image_id], s[image_id]
            for k in ("features", "boxes", "obj_id", "obj_conf", "attr_id", "attr_conf"):
                np.testing.assert_array_equal(g[k][()], want[k])
            assert (g["img_h"][()], g["img_w"][()]) == tuple(want["image_hw"])
    # LXMERT src/utils.py load_obj_tsv
    csv.field_size_limit(sys.maxsize)
    fields = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
              "boxes", "features"]
    seen = set()
    with open(tmp_path / "val_obj36.tsv") as f:
        for item in csv.DictReader(f, fields, delimiter="\t"):
            for key in ("img_h", "img_w", "num_boxes"):
                item[key] = int(item[key])
            k = item["num_boxes"]
            for key, shape, dtype in (("objects_id", (k,), np.int64), ("objects_conf", (k,), np.float32),
                                      ("attrs_id", (k,), np.int64), ("attrs_conf", (k,), np.float32),
                                      ("boxes", (k, 4), np.float32), ("features", (k, -1), np.float32)):
                item[key] = np.frombuffer(base64.b64decode(item[key]), dtype=dtype).reshape(shape)
            want = s[item["img_id"]]
            np.testing.assert_array_equal(item["features"], want["features"])
            np.testing.assert_array_equal(item["boxes"], want["boxes"])
            np.testing.assert_array_equal(item["objects_id"], want["obj_id"])
            np.testing.assert_array_equal(item["attrs_conf"], want["attr_conf"])
            assert (item["img_h"], item["img_w"]) == tuple(want["image_hw"])
            seen.add(item["img_id"])
    assert seen == set(s)


def test_forced_boxes_from_the_command_line(region_store, tmp_path):
    path, imgs = region_store
    s = visfeat.open(path)
    given = {i: s[i]["boxes"][:5].tolist() for i in s}
    given["broken"] = []
    (tmp_path / "boxes.json").write_text(json.dumps(given))
    base = [sys.executable, "-m", "visfeat", "extract", "--preset", "butd-r101-36", "--weights", str(WEIGHTS),
            "--images", str(imgs), "--device", "cpu", "--workers", "0", "--batch-size", "2"]
    subprocess.run(base + ["--boxes", str(tmp_path / "boxes.json"), "--out", str(tmp_path / "g.h5")], check=True,
                   capture_output=True, text=True)
    g = visfeat.open(tmp_path / "g.h5")
    ex = visfeat.load_extractor("butd-r101-36", weights=str(WEIGHTS), device="cpu")
    for image_id in s:
        np.testing.assert_allclose(g[image_id]["boxes"], np.asarray(given[image_id], np.float32), rtol=1e-6)
        batch = ex.collate([ex.preprocess(Image.open(imgs / f"{image_id}.png").convert("RGB"))])
        batch["image_id"] = [image_id]
        ex.set_given_boxes({image_id: np.asarray(given[image_id], np.float32)})
        np.testing.assert_allclose(g[image_id]["features"], ex.forward(batch)[0]["features"], rtol=1e-4, atol=1e-5)
    # the given boxes are part of the store's identity, and a missing image id is a clear error
    assert json.loads(h5py.File(tmp_path / "g.h5").attrs["config"])["given_boxes"]
    del given["rocket"]
    (tmp_path / "partial.json").write_text(json.dumps(given))
    p = subprocess.run(base + ["--boxes", str(tmp_path / "partial.json"), "--out", str(tmp_path / "p.h5")],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "no boxes for 1 of 5 images, e.g. rocket" in p.stderr


@needs_fixture
@pytest.mark.workflow
def test_workflow_region_features_and_given_boxes_from_config(tmp_path, sample_dir):
    """Real snakemake: a placed official-layout weights file, a region instance and a forced-boxes instance."""
    import yaml
    from conftest import copy_workflow, snakemake

    wd = copy_workflow(tmp_path)
    placed = wd / "resources/weights/butd-r101-36/faster_rcnn_from_caffe_attr.pkl"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(WEIGHTS.read_bytes())
    (wd / "lists").mkdir()
    (wd / "lists/two.txt").write_text("chelsea.png\ncoffee.png\n")
    given = {"chelsea": [[10, 20, 200, 250], [0, 0, 451, 300]], "coffee": [[50.5, 60, 300, 200]]}
    (wd / "lists/two.json").write_text(json.dumps(given))
    cfg = {
        "datasets": {"two": {"source": "list", "list": "lists/two.txt", "path": str(sample_dir)}},
        "extractors": {"butd-r101-36": {"batch_size": 2, "workers": 1},
                       "gt": {"preset": "butd-r101-36", "boxes": "lists/{dataset}.json", "weights": str(WEIGHTS)}},
        "features": [{"datasets": ["two"], "extractors": ["butd-r101-36", "gt"]}],
    }
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(wd, "--cores", "2")
    s, g = visfeat.open(wd / "results/two/butd-r101-36.h5"), visfeat.open(wd / "results/two/gt.h5")
    assert sorted(s) == sorted(g) == ["chelsea", "coffee"]
    ex = visfeat.load_extractor("butd-r101-36", weights=str(WEIGHTS), device="cpu")
    (want,) = run(ex, ["chelsea.png"])
    assert_same_regions(s["chelsea"], want, "workflow vs in-process")
    for image_id, boxes in given.items():
        np.testing.assert_allclose(g[image_id]["boxes"], np.asarray(boxes, np.float32))
        assert g[image_id]["features"].shape == (len(boxes), 256)


def test_report_figures_name_classes_and_attributes_in_words(region_store, tmp_path):
    from visfeat.analysis.report import _label, feature_report
    from visfeat.extractors.vocab import words_for
    from visfeat.store.reader import FeatureStore

    path, imgs = region_store
    paths = feature_report(str(path), str(tmp_path / "rep"), root=str(imgs))
    assert {p.name for p in paths} >= {"samples.png", "classes.png", "norms.png"}
    for p in paths:
        im = Image.open(p)
        assert im.width >= 400 and len(np.unique(np.asarray(im.convert("L")))) > 8, p.name
    row = FeatureStore(path)["chelsea"]
    objs, attrs = words_for("butd-r101-36")
    first = lambda line: line.split(",")[0]  # noqa: E731  (synonyms: the first is shown)
    want = f"{first(attrs[row['attr_id'][0]])} {first(objs[row['obj_id'][0]])}"
    assert _label(row, 0, words_for("butd-r101-36")) == want
