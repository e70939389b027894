"""The dataset registry: entries, planning without network, COCO splits through pycocotools, and a registry
dataset downloaded from 127.0.0.1 end to end."""
import hashlib
import json
import re

import pytest
import yaml
from conftest import REPO, copy_workflow, snakemake
from helpers.http_server import FileServer, zip_bytes
from PIL import Image

import visfeat
from visfeat.sources.manifest import build_manifest, missing_ids
from visfeat.sources.splits import pairs_from_coco_annotation, pairs_from_karpathy
from visfeat.workflow.config import load_registry

REG = load_registry(str(REPO / "config/datasets.yaml"))


def test_registry_entries_are_complete():
    for name, a in REG["archives"].items():
        assert a["url"].startswith(("http://", "https://")) and a["size"] > 0, name
        if "sha256" in a:
            assert re.fullmatch(r"[0-9a-f]{64}", a["sha256"]), name
    for name, d in REG["datasets"].items():
        kinds = [k for k in ("local", "annotation", "karpathy", "folders") if k in d]
        assert len(kinds) == 1, name
        assert d["id_style"] in ("coco", "stem", "path")
        if "local" in d:
            assert "instructions" in d and "http" in d["instructions"], name
    assert {"coco_train2014", "coco_val2014", "coco_test2014", "coco_test2015", "coco_testdev2015", "coco_train2017",
            "coco_val2017", "coco_test2017", "vg", "gqa", "nlvr2_train", "nlvr2_dev", "nlvr2_test1", "flickr30k",
            "coco_karpathy_test"} <= set(REG["datasets"])
    for name, entry in REG["published"].items():  # every published file stands for a dataset of the registry
        assert entry["dataset"] in REG["datasets"], name
    xlxmert = {e["dataset"] for e in REG["published"].values() if "ai2-vision-x-lxmert" in e["url"]}
    assert xlxmert == {"coco_train2014", "coco_val2014", "coco_test2015", "vg", "gqa", "nlvr2_train", "nlvr2_dev",
                       "nlvr2_test1"}  # allenai/x-lxmert README "Download features": grid8 and boxes36 of each


@pytest.mark.workflow
def test_dry_run_plans_the_whole_registry_without_network(tmp_path):
    wd = copy_workflow(tmp_path)
    cfg = yaml.safe_load((wd / "config/config.yaml").read_text())
    cfg["datasets"] = {name: {"source": name, "shards": 4} for name in REG["datasets"]}
    cfg["features"] = [{"datasets": list(REG["datasets"]), "extractors": ["effnet-lite0"]}]
    cfg["kmeans"] = {}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    dead = "http://127.0.0.1:9"  # any request would fail at once
    p = snakemake(wd, "-n", env={"http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead})
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", p.stdout, re.M))
    used = {a for d in REG["datasets"].values() for a in d.get("archives", [])}
    assert int(counts["download_archive"]) == len(used)
    assert int(counts["manifest"]) == len(REG["datasets"]) and int(counts["extract"]) == 4 * len(REG["datasets"])
    one = snakemake(wd, "-n", "features_coco_val2017")
    assert "download_archive" in one.stdout and "coco_train2014" not in one.stdout


def _coco_files(root, split_images: dict[str, list[int]]):
    """COCO-style caption annotation files + image folders; returns {split: annotation path}."""
    out = {}
    for split, ids in split_images.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        images = [{"id": i, "file_name": f"COCO_{split}_{i:012d}.jpg", "width": 32, "height": 24} for i in ids]
        anns = [{"id": 1000 + k, "image_id": i, "caption": f"image {i}"} for k, i in enumerate(ids)]
        ann = root / f"captions_{split}.json"
        ann.write_text(json.dumps({"images": images, "annotations": anns, "info": {}, "licenses": []}))
        out[split] = ann
        for img in images:
            Image.new("RGB", (32, 24), (img["id"] % 255, 0, 0)).save(root / split / img["file_name"])
    return out


def test_coco_split_membership_and_missing_by_id(tmp_path):
    anns = _coco_files(tmp_path, {"train2014": [9, 25, 30], "val2014": [42, 391895, 7]})
    (tmp_path / "val2014" / "COCO_val2014_000000000007.jpg").unlink()
    (tmp_path / "train2014" / "COCO_train2014_000000000042.jpg").write_bytes(b"")  # a same-named file elsewhere
    val = pairs_from_coco_annotation(anns["val2014"], "val2014", "coco")
    assert [i for i, _ in val] == ["391895", "42", "7"]  # the annotation's ids, nothing from train2014
    assert dict(val)["42"] == "val2014/COCO_val2014_000000000042.jpg"
    stems = pairs_from_coco_annotation(anns["val2014"], "val2014", "stem")
    assert "COCO_val2014_000000391895" in dict(stems)
    m = build_manifest(tmp_path, val)
    assert missing_ids(m) == ["7"]
    train = pairs_from_coco_annotation(anns["train2014"], "train2014", "coco")
    assert {i for i, _ in train} == {"9", "25", "30"}


def test_karpathy_split(tmp_path):
    data = {"images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "cocoid": 42, "split": "test", "sentences": []},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "cocoid": 9, "split": "train", "sentences": []},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000007.jpg", "cocoid": 7, "split": "restval", "sentences": []},
    ]}
    f = tmp_path / "dataset_coco.json"
    f.write_text(json.dumps(data))
    folders = {"train2014": "coco_train2014/train2014", "val2014": "coco_val2014/val2014"}
    assert pairs_from_karpathy(f, ["test"], folders) == [("42", "coco_val2014/val2014/COCO_val2014_000000000042.jpg")]
    assert [i for i, _ in pairs_from_karpathy(f, ["train", "restval"], folders)] == ["7", "9"]




@pytest.mark.workflow
def test_registry_dataset_end_to_end_over_local_http(tmp_path):
    src = tmp_path / "src"
    anns = _coco_files(src, {"val2014": [42, 391895, 7], "train2014": [9]})
    images = zip_bytes({f"val2014/{p.name}": p.read_bytes() for p in (src / "val2014").iterdir()
                   if p.name != "COCO_val2014_000000000007.jpg"})  # id 7 is in the annotation, not the archive
    annotations = zip_bytes({"annotations/captions_val2014.json": anns["val2014"].read_bytes()})
    (tmp_path / "wf").mkdir()
    wd = copy_workflow(tmp_path / "wf")
    with FileServer({"/val.zip": images, "/ann.zip": annotations}) as srv:
        srv.drop_after["/val.zip"] = len(images) // 2  # the connection drops mid-file once: resumed
        reg = {
            "archives": {
                "mini_val": {"url": srv.url + "/val.zip", "size": len(images), "sha256": hashlib.sha256(images).hexdigest()},
                "mini_ann": {"url": srv.url + "/ann.zip", "size": len(annotations), "sha256": hashlib.sha256(annotations).hexdigest()},
            },
            "datasets": {"mini_val2014": {"archives": ["mini_val", "mini_ann"], "annotation": "mini_ann/annotations/captions_val2014.json",
                                          "images": "mini_val/val2014", "id_style": "coco"}},
        }
        (wd / "config/datasets.yaml").write_text(yaml.safe_dump(reg))
        cfg = {"datasets": {"minival": {"source": "mini_val2014"}}, "extractors": {"effnet-lite0": {}},
               "features": [{"datasets": ["minival"], "extractors": ["effnet-lite0"]}]}
        (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
        p = snakemake(wd, "features_minival")
        assert ("/val.zip", f"bytes={len(images) // 2}-") in srv.requests
    s = visfeat.open(wd / "results/minival/effnet-lite0.h5")
    assert sorted(s) == ["391895", "42"] and s.failed[0][0] == "7"
    assert "missing image files (1), by id: 7" in (wd / "logs/manifest/minival.log").read_text()
    assert p.returncode == 0


@pytest.mark.workflow
def test_signup_dataset_missing_prints_instructions(tmp_path):
    wd = copy_workflow(tmp_path)
    cfg = yaml.safe_load((wd / "config/config.yaml").read_text())
    cfg["datasets"] = {"nlvr2_dev": {"source": "nlvr2_dev"}}
    cfg["features"] = [{"datasets": ["nlvr2_dev"], "extractors": ["effnet-lite0"]}]
    cfg["kmeans"] = {}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "resources/datasets/nlvr2/images/dev does not exist" in out and "Google Form" in out
