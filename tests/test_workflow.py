"""Real snakemake runs in temp dirs on the sample photos, generated bad images and tiny CLIP weights."""
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import copy_workflow, snakemake
from helpers.http_server import FileServer
from helpers.throttle import throttled_env
from helpers.stores import stores_identical

import visfeat
from visfeat.engine.items import folder_items
from visfeat.engine.run import run_extraction

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
    from visfeat.sources.images import load_image

    for image_id in s:
        x = ex.preprocess(load_image(wd / "resources/datasets/sample" / s.h5["image_path"].asstr()[s.index[image_id]]))
        with torch.no_grad():
            direct = int(ex.model(x["image"][None]).argmax())
        stored = int(ex.model.classifier(torch.from_numpy(s[image_id]["global"])).argmax())
        assert stored == direct, image_id
    assert int(ex.model.classifier(torch.from_numpy(s["chelsea"]["global"])).argmax()) == 285


def test_default_run_ends_with_what_it_wrote(default_run):
    _, p = default_run
    assert p.stdout.endswith("visfeat: this run wrote\n  results/sample/effnet-lite0.h5: 8 images, 0 failed\n")


def test_extraction_progress_reaches_the_console_and_the_log(default_run):
    """The extract jobs' progress lines are on the Snakemake console (and still in each job's log)."""
    wd, p = default_run
    shown = re.findall(r"^\[effnet-lite0\] (\d+)/(\d+) images .* left$", p.stderr, re.M)
    assert shown and all(int(n) <= int(total) for n, total in shown), p.stderr[-2000:]
    logs = "".join(f.read_text() for f in (wd / "logs/extract/sample/effnet-lite0").glob("*.log"))
    assert all(f"[effnet-lite0] {n}/{total} images" in logs for n, total in shown)


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


def test_changed_extractor_option_reruns_its_extract_jobs(clip_run, tmp_path):
    """A changed instance option (here `amp`) plans the extract jobs again: the rule's `args` param is derived from
    its input, which Snakemake's params trigger skips, so the instance's config is also a plain param."""
    changed = tmp_path / "amp.yaml"
    changed.write_text(yaml.safe_dump({"extractors": {"clip-vit-b32": {"batch_size": 3, "amp": True}}}))
    p = snakemake(clip_run, "-n", "--configfile", str(changed))
    out = p.stdout + p.stderr
    assert "rule extract" in out and "params have changed" in out
    p = snakemake(clip_run, "-n")  # the config as it was: no extract job (other tests may leave a merge to do)
    assert "rule extract" not in p.stdout + p.stderr


def test_end_of_run_names_the_stores_written_and_their_failures(clip_run):
    """The Snakefile's onsuccess: each store the run wrote, its image count and its failed ids (a shard only as a
    target of its own); a run with nothing to do prints nothing."""
    wd = clip_run
    store, shard = "results/odd/clip-vit-b32.h5", "results/odd/clip-vit-b32/shards/0.h5"
    (wd / shard).unlink()
    out = snakemake(wd, shard).stdout
    assert f"this run wrote\n  {shard}: 7 images, 4 failed (" in out and store not in out
    out = snakemake(wd, store).stdout  # the merge, its shard being newer
    failed = [i for i, _ in visfeat.open(wd / store).failed]
    assert len(failed) == 4 and len(visfeat.open(wd / store)) == 7
    assert f"visfeat: this run wrote\n  {store}: 7 images, 4 failed ({', '.join(failed)}; visfeat inspect {store})\n" in out
    assert shard not in out and "this run wrote" not in snakemake(wd, store).stdout  # then nothing to be done


def test_killed_extraction_job_resumes_to_identical_file(clip_run, tmp_path):
    wd = clip_run
    reference = tmp_path / "ref.h5"
    shutil.copy(wd / "results/sample/clip-vit-b32/shards/0.h5", reference)
    shutil.rmtree(wd / "results/sample")  # everything for this dataset goes again, now throttled
    env = throttled_env(tmp_path / "throttle", 1.5)
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


def test_extract_job_reads_its_shard_as_the_shard_list_gave_it(tmp_path):
    """The manifest slice an extraction job reads is the list file a shard job used to write, item for item (so
    resume state and signatures carry over), including empty shards when there are more shards than images."""
    import pandas as pd

    from visfeat.engine.items import manifest_items, read_list
    from visfeat.sources.manifest import write_shard

    df = pd.DataFrame({"image_id": ["b", "a", "c/d"], "path": ["b.png", "x/a.jpg", "/abs/d.png"],
                       "bytes": 1, "width": 1, "height": 1})
    df.to_parquet(tmp_path / "manifest.parquet")
    for i in range(5):
        write_shard(df, 5, i, tmp_path / f"{i}.txt")
        assert manifest_items(tmp_path / "manifest.parquet", 5, i, "/root") == read_list(tmp_path / f"{i}.txt", "/root")


def test_ten_thousand_shards_plan_one_job_each(tmp_path, sample_dir):
    """No job per shard list: 10,000 shards plan 10,000 extraction jobs and a few for the dataset (issue 17)."""
    import re

    wd = copy_workflow(tmp_path)
    cfg = {"datasets": {"many": {"source": "folder", "path": str(sample_dir), "shards": 10000}},
           "extractors": {"effnet-lite0": {}},
           "features": [{"datasets": ["many"], "extractors": ["effnet-lite0"]}]}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, "-n", "all_features", "--quiet", "rules").stdout
    jobs = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", out, re.M)}
    assert jobs["extract"] == 10000 and jobs["total"] <= 10010, out[-2000:]


def test_ten_thousand_shards_keep_every_command_line_short(tmp_path, sample_dir):
    """merge and report name the shard stores and logs as a folder and a count, not one argument each: with 10,000
    shards a listed command would pass Linux's 128 KiB argument limit (issue 17 follow-up)."""
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted(os.listdir(sample_dir))[:2]:
        shutil.copy2(sample_dir / name, images / name)
    wd = copy_workflow(tmp_path)
    cfg = {"datasets": {"many": {"source": "folder", "path": str(images), "shards": 10000}},
           "extractors": {"effnet-lite0": {}},
           "features": [{"datasets": ["many"], "extractors": ["effnet-lite0"]}]}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, "-n", "-p", "--forceall", "results/report/many/effnet-lite0/samples.png").stdout
    commands = [line.removeprefix("Shell command: ") for line in out.splitlines() if line.startswith("Shell command: ")]
    for name in ("merge", "report"):
        assert any(f" visfeat {name} " in c and "--shards 10000" in c for c in commands), name
    longest = max(commands, key=len)
    assert len(longest.encode()) < 8192, longest[:500]


def test_webdataset_source_gives_the_features_of_the_same_images_in_a_folder(tmp_path, sample_dir):
    """Tars as img2dataset writes them (jpg/txt/json members, its .parquet and _stats.json beside them), one broken
    image and one truncated tar: the features of a folder of the same images; the broken image, the member the tar
    ends inside and the truncated tar itself are recorded failures, and every shard completes."""
    import json
    import tarfile

    photos = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "camera.png", "horse.png"]
    jpgs = []
    for name in photos:
        from PIL import Image

        buf = io.BytesIO()
        Image.open(sample_dir / name).convert("RGB").save(buf, "JPEG", quality=90)
        jpgs.append(buf.getvalue())
    tars = {"00000": {"000000000": jpgs[0], "000000001": jpgs[1], "000000002": b"\xff\xd8 not a jpeg"},
            "00001": {"000010000": jpgs[2], "000010001": jpgs[3]},
            "00002": {"000020000": jpgs[4], "000020001": jpgs[5]}}  # cut short inside its last image below
    web, folder = tmp_path / "cc", tmp_path / "folder"
    web.mkdir(), folder.mkdir()
    for shard, samples in tars.items():
        with tarfile.open(web / f"{shard}.tar", "w") as t:
            for key, jpg in samples.items():
                meta = {"url": f"http://127.0.0.1/{key}.jpg", "caption": f"photo {key}", "status": "success"}
                for ext, data in (("jpg", jpg), ("txt", f"photo {key}".encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
                if shard != "00002" or key != "000020001":
                    (folder / f"{key}.jpg").write_bytes(jpg)
        (web / f"{shard}.parquet").write_bytes(b"")
        (web / f"{shard}_stats.json").write_text("{}")
    with tarfile.open(web / "00002.tar") as t:
        cut = t.getmember("000020001.jpg")
    data = (web / "00002.tar").read_bytes()
    (web / "00002.tar").write_bytes(data[:cut.offset_data + cut.size // 2])

    (tmp_path / "wd").mkdir()
    wd = copy_workflow(tmp_path / "wd")
    cfg = {"datasets": {"cc": {"source": "webdataset", "path": f"{web}/{{00000..00002}}.tar", "tars_per_shard": 2},
                        "folder": {"source": "folder", "path": str(folder)}},
           "extractors": {"effnet-lite0": {"batch_size": 1}},  # one image per forward: batch-independent bits
           "features": [{"datasets": ["cc", "folder"], "extractors": ["effnet-lite0"]}]}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(wd, "results/cc/effnet-lite0.h5", "results/folder/effnet-lite0.h5")
    import pandas as pd

    from visfeat.sources.manifest import manifest_root
    from visfeat.sources.tars import scan_tar_rows

    path = wd / "results/cc/manifest.parquet"  # a tar source's manifest lists its tars; their samples:
    manifest = scan_tar_rows(pd.read_parquet(path), manifest_root(path))
    assert manifest.set_index("image_id")["txt"]["000010000"] == "photo 000010000"
    assert json.loads(manifest.set_index("image_id")["json"]["000000001"])["url"] == "http://127.0.0.1/000000001.jpg"
    assert sorted(p.name for p in (wd / "results/cc/effnet-lite0/shards").glob("*.h5")) == ["0.h5", "1.h5"]
    from_tars = visfeat.open(wd / "results/cc/effnet-lite0.h5")
    from_folder = visfeat.open(wd / "results/folder/effnet-lite0.h5")
    assert sorted(from_tars) == sorted(from_folder) == ["000000000", "000000001", "000010000", "000010001", "000020000"]
    for i in from_folder:  # the same decoded pixels through the same forward
        for f in ("global", "grid", "logits", "image_hw"):
            np.testing.assert_array_equal(from_tars[i][f], from_folder[i][f])
    failed = dict(from_tars.failed)
    assert sorted(failed) == sorted(["000000002", "000020001", "00002.tar"])
    assert [i for i, _ in from_folder.failed] == ["000000002"]
    assert failed["000020001"].startswith("truncated tar") and failed["00002.tar"].startswith("truncated tar")
    assert failed["000000002"].startswith("undecodable: cannot identify image file '00000.tar@")  # tar, offset
    assert dict(from_folder.failed)["000000002"].startswith("undecodable: cannot identify image file")
