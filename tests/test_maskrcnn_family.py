"""The maskrcnn-benchmark family (vinvl-x152c4, vmb-x152, grid8-x152): parity with the originals, batching,
checkpoint layouts and the MMF / X-LXMERT exports.

Parity fixtures: tests/fixtures/vinvl/ (scene_graph_benchmark @8e14944 AttrRCNN, MMF's settings) and
tests/fixtures/vmb/ (vqa-maskrcnn-benchmark + MMF extract_features_vmb.py + X-LXMERT's grid8 script), each
made by running the ORIGINAL code on tiny seeded weights saved in the official checkpoint layout (see each
NOTE.md); the weights here are loaded by the real checkpoint code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.photos import assert_same_regions, cosine, photo, top_boxes

import visfeat
from visfeat.engine.items import folder_items
from visfeat.engine.run import run_extraction

FIX = Path(__file__).parent / "fixtures"
VINVL = FIX / "vinvl" / "tiny_vinvl.pth"
VMB = FIX / "vmb" / "tiny_x152_fpn.pth"
PHOTOS = ("astronaut.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "coffee.png")


def load_ref(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def sub(ref: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}


def run(ex, names) -> list[dict]:
    batch = ex.collate([ex.preprocess(photo(n)) for n in names])
    batch["image_id"] = [Path(n).stem for n in names]
    return ex.forward(batch)


# ---- VinVL ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vinvl_ref():
    return load_ref(VINVL.with_name("reference.npz"))


@pytest.mark.parametrize("variant", ["regress", "noregress"])
def test_vinvl_parity_with_scene_graph_benchmark(vinvl_ref, variant):
    ex = visfeat.load_extractor("vinvl-x152c4", weights=str(VINVL), device="cpu",
                                ignore_box_regression=variant == "noregress")
    for n in PHOTOS:
        (o,) = run(ex, [n])
        r = sub(vinvl_ref, f"{Path(n).stem}/{variant}/")
        what = f"{variant} {n}"
        ref_ids = np.where(r["attr_scores"] > 0, r["attr_labels"] - 1, -1)  # empty slots: -1 (ours), score 0
        assert_same_regions(o, {"boxes": r["boxes"], "obj_id": r["labels"] - 1, "features": r["box_features"],
                                "obj_conf": r["scores"], "attr_ids": ref_ids, "attr_confs": r["attr_scores"]}, what)


def test_vinvl_batch_of_mixed_sizes_equals_alone():
    ex = visfeat.load_extractor("vinvl-x152c4", weights=str(VINVL), device="cpu")
    ex.group_sizes = False  # one padded forward (the accelerators' path; the CPU runs each image alone)
    names = list(PHOTOS)
    for n, b in zip(names, run(ex, names)):
        (a,) = run(ex, [n])
        assert_same_regions(b, a, f"batched {n}")  # every field, through the matching: ties may swap rows


# ---- VMB and grid8 ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vmb_ref():
    return load_ref(VMB.with_name("reference.npz"))


def test_vmb_parity_with_mmf_extract_features_vmb(vmb_ref):
    ex = visfeat.load_extractor("vmb-x152", weights=str(VMB), device="cpu")
    for n in PHOTOS:
        (o,) = run(ex, [n])
        r = sub(vmb_ref, f"{Path(n).stem}/vmb/")
        k = int(r["num_boxes"])
        assert int(o["num_boxes"]) == k, f"{n}: num_boxes {o['num_boxes']} vs {k}"
        top = top_boxes(o, k)  # MMF's order beyond num_boxes is a tie order
        top["cls_prob"] = top["cls_prob"][:, 1:]  # MMF drops the background column
        assert_same_regions(top, {"boxes": r["bbox"][:k], "obj_id": r["objects"][:k], "features": r["features"][:k],
                                  "cls_prob": r["cls_prob"][:k]}, n)


def test_grid8_parity_with_xlxmert(vmb_ref):
    ex = visfeat.load_extractor("grid8-x152", weights=str(VMB), device="cpu")
    outs = run(ex, list(PHOTOS))  # one mixed batch: each image masked to its own extent
    for n, o in zip(PHOTOS, outs):
        ref = vmb_ref[f"{Path(n).stem}/grid8/features"]
        assert o["grid"].shape == ref.shape
        assert cosine(o["grid"], ref).min() >= 0.999, n
        assert np.abs(o["grid"] - ref).max() <= 1e-3 * np.abs(ref).max() + 1e-4, n


def test_vmb_batch_of_mixed_sizes_equals_alone():
    ex = visfeat.load_extractor("vmb-x152", weights=str(VMB), device="cpu")
    ex.group_sizes = False  # one padded forward (the accelerators' path; the CPU runs each image alone)
    names = ["astronaut.png", "chelsea.png", "hubble_deep_field.jpg"]
    for n, b in zip(names, run(ex, names)):
        (a,) = run(ex, [n])
        k = int(a["num_boxes"])
        assert int(b["num_boxes"]) == k
        assert_same_regions(top_boxes(b, k), top_boxes(a, k), f"batched {n}")


@pytest.mark.parametrize("preset, weights", [("vinvl-x152c4", VINVL), ("vmb-x152", VMB), ("grid8-x152", VMB)])
def test_padded_batch_equals_alone(preset, weights):
    """One padded forward over mixed sizes (the accelerators' path; the CPU runs each image alone instead)."""
    ex = visfeat.load_extractor(preset, weights=str(weights), device="cpu")
    names = ["astronaut.png", "chelsea.png", "hubble_deep_field.jpg"]
    alone = [run(ex, [n])[0] for n in names]
    ex.group_sizes = False
    for n, b, a in zip(names, run(ex, names), alone):
        if preset.startswith("grid8"):
            assert cosine(b["grid"], a["grid"]).min() >= 0.99999, n
            continue
        k = int(a["num_boxes"])
        assert int(b["num_boxes"]) == k
        assert_same_regions(top_boxes(b, k), top_boxes(a, k), f"padded {n}")


# ---- checkpoints ------------------------------------------------------------------------------------------------
def test_maskrcnn_benchmark_layouts_with_and_without_module_prefix(tmp_path):
    state = torch.load(VINVL, map_location="cpu", weights_only=True)["model"]
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    assert plain.keys() != state.keys()  # the fixture carries the DDP prefix
    torch.save({"model": plain}, tmp_path / "plain.pth")
    (a,) = run(visfeat.load_extractor("vinvl-x152c4", weights=str(VINVL), device="cpu"), ["chelsea.png"])
    (b,) = run(visfeat.load_extractor("vinvl-x152c4", weights=str(tmp_path / "plain.pth"), device="cpu"),
               ["chelsea.png"])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("change,match", [
    ("drop", "roi_heads.box_predictor.cls_score.weight"),
    ("extra", "unexpected.*rpn.head.extra"),
    ("anchors", "cell anchors"),
    ("attribute", "attribute.feature_extractor differs"),
])
def test_checkpoint_errors_name_the_problem(tmp_path, change, match):
    state = dict(torch.load(VINVL, map_location="cpu", weights_only=True)["model"])
    if change == "drop":
        del state["module.roi_heads.box.predictor.cls_score.weight"]
    elif change == "extra":
        state["module.rpn.head.extra.weight"] = torch.zeros(1)
    elif change == "anchors":
        state["module.rpn.anchor_generator.cell_anchors.0"] = state["module.rpn.anchor_generator.cell_anchors.0"] * 2
    else:
        k = next(k for k in state if k.startswith("module.attribute.feature_extractor.head.layer4.0.conv1"))
        state[k] = state[k] + 1
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match=match):
        visfeat.load_extractor("vinvl-x152c4", weights=str(tmp_path / "bad.pth"), device="cpu")


# ---- MMF export, read the way MMF reads it ----------------------------------------------------------------------
def mmf_read(path: Path, max_loc: int = 100) -> tuple[np.ndarray, dict]:
    """MMF's PaddedFasterRCNNFeatureReader (mmf/datasets/databases/readers/feature_readers.py): the .npy, the
    `_info.npy` dict via np.load(allow_pickle).item(), features padded to max_loc with `max_features` set."""
    image_feature = np.load(path, allow_pickle=True)
    info = {}
    info_path = "{}_info.npy".format(str(path).split(".npy")[0])
    if Path(info_path).exists():
        info.update(np.load(info_path, allow_pickle=True).item())
    loc = min(image_feature.shape[0], max_loc)
    padded = np.zeros((max_loc, image_feature.shape[1]), np.float32)
    padded[:loc] = image_feature[:loc]
    info["max_features"] = loc
    return padded, info


@pytest.mark.parametrize("preset,weights", [("vinvl-x152c4", VINVL), ("vmb-x152", VMB)])
def test_mmf_npy_export_reads_like_mmf(tmp_path, preset, weights):
    imgs = tmp_path / "images"
    imgs.mkdir()
    for n in ("astronaut.png", "coffee.png"):
        photo(n).save(imgs / (Path(n).stem + ".png"))
    ex = visfeat.load_extractor(preset, weights=str(weights), device="cpu")
    run_extraction(ex, folder_items(imgs), tmp_path / "r.h5", batch_size=2, workers=1)
    from visfeat.interop.exporters import export

    assert export("mmf-npy", str(tmp_path / "r.h5"), str(tmp_path / "mmf")) == 2
    store = visfeat.open(tmp_path / "r.h5")
    for image_id in ("astronaut", "coffee"):
        row = store[image_id]
        feats, info = mmf_read(tmp_path / "mmf" / f"{image_id}.npy")
        k = len(row["boxes"])
        h, w = (int(v) for v in row["image_hw"])
        assert info["image_width"] == w and info["image_height"] == h and info["max_features"] == k
        if preset.startswith("vinvl"):  # MMF's 2054-d: feature + normalised box geometry
            assert feats.shape == (100, row["features"].shape[1] + 6)
            np.testing.assert_allclose(feats[:k, :-6], row["features"])
            b = row["boxes"]
            geo = np.stack([b[:, 0] / w, b[:, 1] / h, b[:, 2] / w, b[:, 3] / h,
                            (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], 1)
            np.testing.assert_allclose(feats[:k, -6:], geo, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(info["bbox"], geo, rtol=1e-5, atol=1e-6)
            assert np.array_equal(info["labels"], row["obj_id"] + 1) and info["attr_labels"].shape == (k, 16)
            np.testing.assert_array_equal(info["box_features"], row["features"])
        else:
            np.testing.assert_array_equal(feats[:k], row["features"])
            np.testing.assert_array_equal(info["bbox"], row["boxes"])
            assert info["num_boxes"] == int(row["num_boxes"]) and np.array_equal(info["objects"], row["obj_id"])
            assert info["cls_prob"].shape == (k, row["cls_prob"].shape[1] - 1)  # background column dropped


def test_labelmaps_from_the_weights_folder(tmp_path):
    """The labelmaps are fetched beside the weights; ids (0-based) read as their words (VinVL's file: 1-based)."""
    import json

    from visfeat.extractors.vocab import words_for

    assert words_for("vinvl-x152c4", tmp_path) is None  # not placed: no words, ids stay ids
    d = tmp_path / "vinvl-x152c4"
    d.mkdir()
    (d / "VG-SGG-dicts-vgoi6-clipped.json").write_text(json.dumps({
        "label_to_idx": {"man": 1, "shirt": 2, "tree": 3}, "idx_to_label": {"1": "man", "2": "shirt", "3": "tree"},
        "attribute_to_idx": {"white": 1, "black": 2}, "idx_to_attribute": {"1": "white", "2": "black"}}))
    objects, attributes = words_for("vinvl-x152c4", tmp_path)
    assert objects == ("man", "shirt", "tree") and attributes == ("white", "black")
    # VMB: Pythia's COCO-style categories, ids = MMF's 0-based `objects` (extract_features_vmb.py, no --background)
    for preset in ("vmb-x152", "vmb-x101"):
        assert words_for(preset, tmp_path) is None
        (tmp_path / preset).mkdir()
        (tmp_path / preset / "visual_genome_categories.json").write_text(json.dumps({"categories": [
            {"id": 1, "name": "shirt"}, {"id": 0, "name": "yolk"}, {"id": 2, "name": "tree"}]}))
        assert words_for(preset, tmp_path) == (("yolk", "shirt", "tree"), ())


def test_config_yaml_is_read_for_the_values_that_matter():
    """The fork's merged yaml that came with the fixture (cfg.dump()) gives its tiny architecture, and loading
    with it changes nothing for a checkpoint that already implies those sizes."""
    from visfeat.detection.mrcnn_yaml import options_from_yaml
    from visfeat.extractors.registry import resolve_options

    yml = VMB.with_name("config.yaml")
    got = options_from_yaml(yml, resolve_options("vmb-x152"))
    assert got["depth"] == 152 and got["num_groups"] == 4 and got["width_per_group"] == 2
    assert got["num_classes"] == 40 and got["anchor_strides"] == [4, 8, 16, 32, 64]
    assert got["pooler_resolution"] == 7 and got["sampling_ratio"] == 2 and got["rpn_pre_nms_topk"] == 1000
    assert "conf_thresh" not in got and "size" not in got  # MMF's script hard-codes these, not read from the yaml
    (a,) = run(visfeat.load_extractor("grid8-x152", weights=str(VMB), device="cpu"), ["coffee.png"])
    (b,) = run(visfeat.load_extractor("grid8-x152", weights=str(VMB), device="cpu", config_yaml=str(yml)),
               ["coffee.png"])
    np.testing.assert_array_equal(a["grid"], b["grid"])
    with pytest.raises(ValueError, match="does not fit this preset"):
        options_from_yaml(yml, resolve_options("vinvl-x152c4"))


@pytest.mark.workflow
def test_workflow_vinvl_with_placed_weights_and_labelmap(tmp_path, sample_dir):
    """Real snakemake with a configured `resources:` folder: both files of the preset placed where fetch_weights
    would put them there; the store and the report read ids as the labelmap's words."""
    import json

    import yaml
    from conftest import copy_workflow, snakemake

    from visfeat.analysis.report import _label
    from visfeat.extractors.vocab import words_for

    wd = copy_workflow(tmp_path)
    d = wd / "shared_res/weights/vinvl-x152c4"
    d.mkdir(parents=True)
    (d / "vinvl_vg_x152c4.pth").write_bytes(VINVL.read_bytes())
    labels = {str(i): f"object{i}" for i in range(1, 41)}
    attrs = {str(i): f"attr{i}" for i in range(1, 21)}
    (d / "VG-SGG-dicts-vgoi6-clipped.json").write_text(json.dumps({"idx_to_label": labels, "idx_to_attribute": attrs}))
    (wd / "lists").mkdir()
    (wd / "lists/two.txt").write_text("chelsea.png\ncoffee.png\n")
    cfg = {"resources": "shared_res",
           "datasets": {"two": {"source": "list", "list": "lists/two.txt", "path": str(sample_dir)}},
           "extractors": {"vinvl-x152c4": {"batch_size": 2, "workers": 1}},
           "features": [{"datasets": ["two"], "extractors": ["vinvl-x152c4"]}]}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(wd, "--cores", "2")
    s = visfeat.open(wd / "results/two/vinvl-x152c4.h5")
    row = s["chelsea"]
    assert row["attr_ids"].shape == (len(row["boxes"]), 16) and (wd / "results/report/two/vinvl-x152c4/classes.png").exists()
    log = (wd / "logs/report_features/two/vinvl-x152c4.log").read_text()
    assert "labels: words from shared_res/weights/vinvl-x152c4/VG-SGG-dicts-vgoi6-clipped.json" in log, log
    words = words_for("vinvl-x152c4", d.parent)
    k = int(np.argmax(row["attr_confs"][:, 0] > 0))
    assert _label(row, k, words) == f"attr{row['attr_id'][k] + 1} object{row['obj_id'][k] + 1}"
