"""Real snakemake runs in temp dirs on the sample photos, generated bad images and tiny CLIP weights."""
import hashlib
import io
import os
import shutil
import zipfile
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import visfeat
from conftest import copy_workflow, snakemake
from http_server import FileServer
from test_extract import stores_identical
from visfeat.extract import THROTTLE_ENV, folder_items, run_extraction

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    wd = copy_workflow(tmp_path_factory.mktemp("default"))
    p = snakemake(wd)  # the README's main command: `snakemake` on config/config.yaml
    return wd, p


def test_default_run_classifies_like_the_model(default_run):
    wd, _ = default_run
    s = visfeat.open(wd / "results/sample/effnet-lite0.h5")
    assert len(s) == 8 and s.failed == []
    ex = visfeat.load_extractor("effnet-lite0", device="cpu")
    from visfeat.images import load_image

    for image_id in s:
        x = ex.preprocess(load_image(wd / "resources/datasets/sample" / s.h5["image_path"].asstr()[s.index[image_id]]))
        with torch.no_grad():
            direct = int(ex.model(x["image"][None]).argmax())
        stored = int(ex.model.classifier(torch.from_numpy(s[image_id]["global"])).argmax())
        assert stored == direct, image_id
    assert int(ex.model.classifier(torch.from_numpy(s["chelsea"]["global"])).argmax()) == 285


def test_plain_commands_work_as_typed(default_run):
    wd, _ = default_run
    assert "Nothing to be done" in snakemake(wd, "-n", "all_features").stdout + snakemake(wd, "-n", "all_features").stderr
    lint = snakemake(wd, "--lint")
    assert "Congratulations" in lint.stdout + lint.stderr
    snakemake(wd, "kmeans")  # the default config's small k-means job over the sample grids
    codes = visfeat.open(wd / "results/kmeans/sample-grid/sample.h5")
    assert sorted(codes) == sorted(visfeat.open(wd / "results/sample/effnet-lite0.h5"))
    assert codes["chelsea"]["codes"].shape == (7, 7) and codes["chelsea"]["codes"].max() < 16
    import pickle

    with open(wd / "results/kmeans/sample-grid/sample_codes.pkl", "rb") as f:
        assert pickle.load(f)["chelsea"].tolist() == codes["chelsea"]["codes"].reshape(-1).tolist()
    (wd / "results/sample/effnet-lite0.h5").unlink()
    t = snakemake(wd, "results/sample/effnet-lite0.h5")  # a target file reruns one dataset x extractor
    assert "rule merge" in t.stdout + t.stderr and "rule extract" not in t.stdout + t.stderr
    assert (wd / "results/sample/effnet-lite0.h5").exists()


def test_bad_config_fails_at_start_naming_the_key(tmp_path):
    wd = copy_workflow(tmp_path)
    cfg = yaml.safe_load((wd / "config/config.yaml").read_text())
    cfg["datasets"]["sample"]["shardz"] = 3
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", check=False)
    assert p.returncode != 0 and "config: datasets.sample.shardz: unknown key" in p.stdout + p.stderr


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, tiny_clip, bad_dir, sample_dir):
    """sample (2 shards) + a folder of bad images, tiny CLIP ViT-B/32 in the official TorchScript layout."""
    wd = copy_workflow(tmp_path_factory.mktemp("clip"))
    weights = wd / "resources/weights/clip-vit-b32/ViT-B-32.pt"
    weights.parent.mkdir(parents=True)
    shutil.copy(tiny_clip["vit32"][0], weights)  # placed by the user: used as is
    # an archive served on 127.0.0.1 (downloaded, sha256-checked, unpacked) and an image list with its own ids
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in ("chelsea.png", "coffee.png"):
            z.write(sample_dir / name, f"photos/{name}")
    archive = buf.getvalue()
    (wd / "lists").mkdir()
    (wd / "lists/mine.txt").write_text("cat-1\tchelsea.png\nrocket.jpg\n")
    (wd / "lists/captions.txt").write_text("chelsea\tA cat on a sofa.\ncoffee\ttwo cups of espresso\n")
    with FileServer({"/photos.zip": archive}) as srv:
        cfg = {
            "datasets": {
                "sample": {"source": "sample", "shards": 2},
                "odd": {"source": "folder", "path": str(bad_dir[0])},
                "zipped": {"source": "archive", "url": srv.url + "/photos.zip", "sha256": hashlib.sha256(archive).hexdigest()},
                "listed": {"source": "list", "list": "lists/mine.txt", "path": str(sample_dir)},
            },
            "extractors": {"clip-vit-b32": {"batch_size": 3}},
            "features": [{"datasets": ["sample", "odd", "zipped", "listed"], "extractors": ["clip-vit-b32"]}],
            "text": {"caps": {"captions": "lists/captions.txt", "extractors": ["clip-vit-b32"]}},
        }
        (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
        snakemake(wd)
    return wd


def test_archive_list_and_text_sources(clip_run, sample_dir):
    wd = clip_run
    zipped = visfeat.open(wd / "results/zipped/clip-vit-b32.h5")
    assert sorted(zipped) == ["photos/chelsea", "photos/coffee"]
    listed = visfeat.open(wd / "results/listed/clip-vit-b32.h5")
    assert sorted(listed) == ["cat-1", "rocket"]
    np.testing.assert_allclose(listed["cat-1"]["global"], zipped["photos/chelsea"]["global"], rtol=1e-5, atol=1e-6)
    import h5py

    with h5py.File(wd / "results/text/caps/clip-vit-b32.h5") as f:
        assert list(f["caption_id"].asstr()[:]) == ["chelsea#0", "coffee#0"] and f["text"].shape == (2, 32)


def test_clip_workflow_equals_in_process_extraction(clip_run, sample_dir, bad_dir, tiny_clip, tmp_path):
    wd = clip_run
    ex = visfeat.load_extractor("clip-vit-b32", weights=str(tiny_clip["vit32"][0]), device="cpu")
    for ds, folder in (("sample", sample_dir), ("odd", bad_dir[0])):
        run_extraction(ex, folder_items(folder), tmp_path / f"{ds}.h5", batch_size=3, workers=0)
        direct, merged = visfeat.open(tmp_path / f"{ds}.h5"), visfeat.open(wd / f"results/{ds}/clip-vit-b32.h5")
        assert sorted(direct) == sorted(merged) and sorted(direct.failed) == sorted(merged.failed)
        for i in direct:
            for f in ("global", "grid", "image_hw"):
                np.testing.assert_allclose(merged[i][f], direct[i][f], rtol=1e-5, atol=1e-6)
    odd = visfeat.open(wd / "results/odd/clip-vit-b32.h5")
    assert {i for i, _ in odd.failed} == {k for k, v in bad_dir[1].items() if v}
    out = subprocess.run([sys.executable, "-m", "visfeat", "inspect", str(wd / "results/odd/clip-vit-b32.h5")],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(wd / "src")})
    assert "failed:     4" in out.stdout and "clip-vit-b32" in out.stdout


def test_rerun_does_nothing_and_one_shard_reruns(clip_run):
    wd = clip_run
    p = snakemake(wd)
    assert "Nothing to be done" in p.stdout + p.stderr
    shard = wd / "results/sample/clip-vit-b32/shards/1.h5"
    shard.unlink()
    p = snakemake(wd, str(shard.relative_to(wd)))
    assert shard.exists() and "rule extract" in p.stdout + p.stderr


def test_killed_extraction_job_resumes_to_identical_file(clip_run, tmp_path):
    wd = clip_run
    reference = tmp_path / "ref.h5"
    shutil.copy(wd / "results/sample/clip-vit-b32/shards/0.h5", reference)
    shutil.rmtree(wd / "results/sample")  # everything for this dataset goes again, now throttled
    env = {THROTTLE_ENV: "1.5"}
    cmd = [str(Path(sys.executable).with_name("snakemake")), "--cores", "1",
           "results/sample/clip-vit-b32/shards/0.h5"]
    proc = subprocess.Popen(cmd, cwd=wd, env={**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    parts = wd / "results/sample/clip-vit-b32/shards/0.h5.parts"
    deadline = time.time() + 180
    while not list(parts.glob("b*.npz")) and time.time() < deadline:
        time.sleep(0.1)
    assert list(parts.glob("b*.npz")), proc.communicate()[0][-3000:]
    job = subprocess.run(["pgrep", "-f", "visfeat extract .*shards/0.h5"], capture_output=True, text=True)
    pids = [int(p) for p in job.stdout.split() if os.path.realpath(f"/proc/{p}/cwd") == os.path.realpath(wd)]
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # the job dies (preemption), Snakemake sees it fail
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (parts.parent / "0.h5").exists() and list(parts.glob("b*.npz"))
    snakemake(wd, "results/sample/clip-vit-b32/shards/0.h5")
    assert "resuming after 3 images" in (wd / "logs/extract/sample/clip-vit-b32/0.log").read_text()
    stores_identical(reference, wd / "results/sample/clip-vit-b32/shards/0.h5")
    snakemake(wd)


def test_offline_weights_error_names_file_and_place(tmp_path):
    wd = copy_workflow(tmp_path)
    cfg = yaml.safe_load((wd / "config/config.yaml").read_text())
    cfg["extractors"]["clip-rn50"] = {}
    cfg["weights_mirror"] = "http://weights.visfeat.invalid"  # .invalid never resolves: offline, never a download
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "weights", check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "place RN50.pt" in out and "resources/weights/clip-rn50/RN50.pt" in out, out[-3000:]
