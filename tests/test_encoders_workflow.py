"""The generic encoder presets in a real snakemake run (issue 25): a `timm` ViT whose weights the fetch_weights
localrule downloads from a hub served on 127.0.0.1 (HF_ENDPOINT), and an `openclip` model with `weights:` a local
file in the hub layout; both random-init real architectures, over the sample photos, end to end. Then k-means on
the ViT patch grid, `visfeat export --format xmodaler-npz` of the openclip store read back as X-modaler reads it,
and `text:` with the openclip extractor."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, copy_workflow, snakemake
from helpers.http_server import FileServer

import visfeat
from visfeat.engine.items import folder_items
from visfeat.engine.run import run_extraction

pytestmark = pytest.mark.workflow

TIMM = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # a real pretrained name; random weights here
TIMM_FILE = "resources/weights/timm/vit_tiny_patch16_224/augreg_in21k_ft_in1k/model.safetensors"
# the smallest open_clip ViT with a pretrained tag (no tiny one has a tag: the config check wants a real pair)
OPENCLIP = ("ViT-B-32", "laion2b_s34b_b79k")
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def safetensors_bytes(state_dict: dict[str, torch.Tensor], path) -> bytes:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path.read_bytes()


@pytest.fixture(scope="module")
def encoders_run(tmp_path_factory, sample_dir):
    import open_clip
    import timm

    wd = copy_workflow(tmp_path_factory.mktemp("encoders"))
    torch.manual_seed(0)
    timm_bytes = safetensors_bytes(timm.create_model(TIMM, pretrained=False).state_dict(), wd / "timm.safetensors")
    (wd / "timm.safetensors").unlink()
    oc = open_clip.create_model(OPENCLIP[0], pretrained=None)
    oc_path = wd / "mine" / "open_clip_model.safetensors"
    oc_path.parent.mkdir()
    safetensors_bytes(oc.state_dict(), oc_path)
    (wd / "captions.txt").write_text("chelsea\tA cat on a sofa.\ncoffee\ttwo cups of espresso\n")
    hub = {f"/api/models/timm/{TIMM}/revision/main": json.dumps({"sha": COMMIT}).encode(),
           f"/timm/{TIMM}/resolve/{COMMIT}/model.safetensors": timm_bytes}
    cfg = {
        "datasets": {"sample": {"source": "sample"}},
        "extractors": {
            "vit": {"preset": "timm", "model": TIMM, "layers": [-2], "batch_size": 4, "device": "cpu"},
            "oc": {"preset": "openclip", "model": OPENCLIP[0], "pretrained": OPENCLIP[1],
                   "weights": str(oc_path), "batch_size": 4, "device": "cpu"},
        },
        "features": [{"datasets": ["sample"], "extractors": ["vit", "oc"]}],
        "kmeans": {"vit-grid": {"extractor": "vit", "field": "grid", "train": ["sample"], "assign": ["sample"],
                                "k": 8, "niter": 5}},
        "text": {"caps": {"captions": "captions.txt", "extractors": ["oc"]}},
    }
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    with FileServer(hub) as srv:
        snakemake(wd, "all_features", "kmeans", env={"HF_ENDPOINT": srv.url})
    return wd, oc_path, srv


@pytest.fixture(scope="module")
def oc_extractor(encoders_run):
    """The openclip extractor built in this process on the same file (to compare the workflow's stores with)."""
    return visfeat.load_extractor("openclip", weights=str(encoders_run[1]), device="cpu", model=OPENCLIP[0],
                                  pretrained=OPENCLIP[1])


def test_the_timm_file_was_fetched_from_the_hub_and_pinned(encoders_run):
    wd, _, srv = encoders_run
    assert (f"/timm/{TIMM}/resolve/{COMMIT}/model.safetensors", None) in srv.requests
    rec = json.loads((wd / (TIMM_FILE + ".hub.json")).read_text())
    assert (rec["repo"], rec["revision"], rec["file"]) == (f"timm/{TIMM}", COMMIT, "model.safetensors")


@pytest.mark.parametrize("extractor", ["vit", "oc"])
def test_workflow_stores_equal_in_process_extraction(encoders_run, oc_extractor, sample_dir, tmp_path, extractor):
    wd = encoders_run[0]
    store = visfeat.open(wd / f"results/sample/{extractor}.h5")
    assert len(store) == 8 and store.failed == []
    if extractor == "vit":
        ex = visfeat.load_extractor("timm", weights=str(wd / TIMM_FILE), device="cpu", model=TIMM, layers=[-2])
        names = {"global": (192,), "grid": (14, 14, 192), "prefix": (1, 192), "layer-2": (14, 14, 192)}
    else:
        ex = oc_extractor
        names = {"global": (512,), "grid": (7, 7, 768), "prefix": (1, 768)}
    assert {s.name: tuple(s.shape) for s in store.specs} == names
    assert store.config["preprocess"] == ex.config["preprocess"] and store.config["pooling"] == ex.config["pooling"]
    run_extraction(ex, folder_items(sample_dir), tmp_path / "direct.h5", batch_size=4, workers=0)
    direct = visfeat.open(tmp_path / "direct.h5")
    for image_id in store:
        for name in names:
            np.testing.assert_allclose(store[image_id][name], direct[image_id][name], rtol=1e-5, atol=1e-5)


def test_kmeans_on_the_vit_patch_grid(encoders_run):
    wd, _, _ = encoders_run
    codes = visfeat.open(wd / "results/kmeans/vit-grid/sample.h5")
    assert sorted(codes) == sorted(visfeat.open(wd / "results/sample/vit.h5"))
    assert codes["chelsea"]["codes"].shape == (14, 14) and codes["chelsea"]["codes"].max() < 8


def test_xmodaler_export_of_the_openclip_store(encoders_run, tmp_path):
    """X-modaler (OpenAI-CLIP-Feature's layout) reads `features` (cells, C) and `g_feature` (1, D) per image."""
    wd, _, _ = encoders_run
    out = tmp_path / "xmodaler"
    p = subprocess.run([sys.executable, "-m", "visfeat", "export", "--format", "xmodaler-npz",
                        str(wd / "results/sample/oc.h5"), str(out)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert p.returncode == 0, p.stderr
    store = visfeat.open(wd / "results/sample/oc.h5")
    assert sorted(f.stem for f in out.glob("*.npz")) == sorted(store)
    with np.load(out / "chelsea.npz") as z:  # X-modaler's loader: np.load(path)['features'], ['g_feature']
        assert z["features"].shape == (49, 768) and z["g_feature"].shape == (1, 512)
        np.testing.assert_array_equal(z["features"], store["chelsea"]["grid"].reshape(49, 768))
        np.testing.assert_array_equal(z["g_feature"][0], store["chelsea"]["global"])


def test_text_with_the_openclip_extractor(encoders_run, oc_extractor):
    """`text:` embeds captions with the extractor's own model (its model/tag options), retrieval-ready."""
    import h5py

    wd, ex = encoders_run[0], oc_extractor
    with h5py.File(wd / "results/text/caps/oc.h5") as f:
        assert list(f["caption_id"].asstr()[:]) == ["chelsea#0", "coffee#0"] and f["text"].shape == (2, 512)
        np.testing.assert_allclose(f["text"][:], ex.encode_text(["A cat on a sofa.", "two cups of espresso"]),
                                   rtol=1e-5, atol=1e-5)


def test_jobs_run_with_the_hub_offline(encoders_run):
    """Extraction and text jobs never reach the hub through the libraries: HF_HUB_OFFLINE=1 on their command."""
    wd = encoders_run[0]
    out = snakemake(wd, "-n", "-p", "--forceall", "results/sample/vit.h5", "results/text/caps/oc.h5").stdout
    shells = [line.strip().removeprefix("Shell command:").strip() for line in out.splitlines()
              if "-m visfeat extract" in line or "-m visfeat text" in line]
    assert {"extract", "text"} <= {line.split("-m visfeat ")[1].split()[0] for line in shells}, out[-3000:]
    assert all(line.startswith("HF_HUB_OFFLINE=1 ") for line in shells), shells
