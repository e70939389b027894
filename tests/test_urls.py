"""`source: urls`: real img2dataset (.venv-img2dataset, `make setup-urls`) downloading real photos from 127.0.0.1, with a
dead URL (404), a page that is no image and one that times out (issue 17)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_workflow, snakemake
from helpers.http_server import FileServer
from PIL import Image

import visfeat
from visfeat.sources.tars import scan_img2dataset
from visfeat.workflow.config import ConfigError, validate_config

IMG2DATASET = REPO / ".venv-img2dataset/bin/img2dataset"
PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "horse.png"]
TIMEOUT = 1  # img2dataset --timeout (seconds); the slow URL answers after 3


@pytest.fixture
def img2dataset():
    if not IMG2DATASET.exists():
        pytest.skip(".venv-img2dataset is absent (`make setup-urls` creates it: img2dataset needs pandas<3)")
    return str(IMG2DATASET)


@pytest.fixture(scope="module")
def jpegs(sample_dir) -> dict[str, bytes]:
    """The sample photos encoded as JPEG: what the server sends, and a folder dataset of the same bytes."""
    out = {}
    for name in PHOTOS:
        buf = io.BytesIO()
        Image.open(sample_dir / name).convert("RGB").save(buf, "JPEG", quality=90)
        out[Path(name).stem] = buf.getvalue()
    return out


def server(jpegs: dict[str, bytes]) -> FileServer:
    srv = FileServer({f"/img/{k}.jpg": v for k, v in jpegs.items()} | {"/page.html": b"<html><body>moved</body></html>"})
    srv.delay["/slow.jpg"] = 3 * TIMEOUT
    return srv


def rows(url: str) -> list[tuple[str, str]]:
    """(url, caption): 3 URLs per tar below, so tar 0 = two photos and a 404; tar 1 = a page, the slow URL and a
    photo; tar 2 = two photos."""
    names = ["chelsea", "coffee", "gone", "page", "slow", "rocket", "astronaut", "horse"]
    paths = {"gone": "/img/gone.jpg", "page": "/page.html", "slow": "/slow.jpg"}
    return [(url + paths.get(n, f"/img/{n}.jpg"), f"a photo: {n}") for n in names]


def write_list(path: Path, data: list[tuple[str, str]], url_col="url", caption_col="caption") -> Path:
    df = pd.DataFrame(data, columns=[url_col, caption_col])
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


def requested(srv: FileServer) -> set[str]:
    return {p for p, _ in srv.requests}


def download_cmd(url_list: Path, out: Path, exe: str, **kw) -> list[str]:
    """`visfeat download-urls` run by img2dataset's own python, as under --use-conda: its env holds what it imports."""
    args = {"urls-per-tar": 3, "timeout": TIMEOUT, "threads": 4, **kw}
    cmd = [str(Path(exe).parent / "python"), "-m", "visfeat", "download-urls", "--urls", str(url_list),
           "--out-dir", str(out), "--record", str(out / "downloaded.tsv"), "--img2dataset", exe]
    return cmd + [x for k, v in args.items() for x in (f"--{k}", str(v))]


def run_download(*cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_config_names_the_urls_key(tmp_path):
    schema = str(REPO / "workflow/schemas/config.schema.yaml")
    base = {"extractors": {"effnet-lite0": {}}, "features": [{"datasets": ["web"], "extractors": ["effnet-lite0"]}]}
    for d, msg in [({"source": "urls"}, "datasets.web.urls: required for source urls"),
                   ({"source": "urls", "urls": "list.txt"}, "datasets.web.urls: list.txt is not a .parquet, .csv"),
                   ({"source": "urls", "urls": "nope.csv"}, "datasets.web.urls: file nope.csv does not exist"),
                   ({"source": "urls", "urls": "nope.csv", "img2dataset": {"timeot": 3}},
                    "datasets.web.img2dataset.timeot: unknown key")]:
        with pytest.raises(ConfigError, match=msg):
            validate_config({**base, "datasets": {"web": d}}, schema, base_dir=str(tmp_path))
    (tmp_path / "l.csv").write_text("url\n")
    cfg = validate_config({**base, "datasets": {"web": {"source": "urls", "urls": "l.csv", "shards": 3}}}, schema,
                          base_dir=str(tmp_path))
    from visfeat.workflow.args import WorkflowArgs

    args = WorkflowArgs(cfg, {"datasets": {}, "archives": {}})
    assert args.shard_count("web") == 3 and args.dataset_root("web") == "resources/datasets/web"  # the tars' folder
    line = args.download_urls("web")
    assert "--img2dataset img2dataset --url-col url --caption-col caption --urls-per-tar 10000 --timeout 10" in line
    assert "--out-dir resources/datasets/web" in line
    assert args.manifest("web").endswith("--source urls --downloaded resources/datasets/web/downloaded.tsv --shards 3")


@pytest.mark.parametrize("suffix", [".parquet", ".tsv"])
def test_download_records_every_url_and_keeps_jpeg_bytes(tmp_path, img2dataset, jpegs, suffix):
    """Other list formats and column names; each photo stored byte for byte; every failure a manifest row with
    img2dataset's status and message; captions in `txt`."""
    with server(jpegs) as srv:
        lst = write_list(tmp_path / f"list{suffix}", rows(srv.url), "link", "text")
        run_download(*download_cmd(lst, tmp_path / "dl", img2dataset, **{"url-col": "link", "caption-col": "text"}))
    df = scan_img2dataset(tmp_path / "dl/downloaded.tsv", shards=2)
    assert len(df) == 8 and df["image_id"].is_unique
    by_caption = df.set_index("txt")
    assert list(df["shard"]) == [0] * 6 + [1] * 2  # tars 0 and 1 -> shard 0, tar 2 -> shard 1
    for name, data in jpegs.items():
        r = by_caption.loc[f"a photo: {name}"]
        assert r["error"] == "" and json.loads(r["json"])["url"].endswith(f"/img/{name}.jpg")
        with open(r["tar"], "rb") as f:
            f.seek(r["offset"])
            assert f.read(r["bytes"]) == data  # resize_mode no + skip_reencode: the JPEG as served
    err = by_caption["error"]
    assert err["a photo: gone"] == "img2dataset failed_to_download: HTTP Error 404: Not Found"
    assert err["a photo: page"] == "img2dataset failed_to_resize: Image decoding error"
    assert err["a photo: slow"].startswith("img2dataset failed_to_download:") and "timed out" in err["a photo: slow"]
    assert json.loads(by_caption.loc["a photo: gone", "json"])["status"] == "failed_to_download"


def test_rerun_downloads_nothing_and_an_edited_tar_again(tmp_path, img2dataset, jpegs):
    with server(jpegs) as srv:
        data = rows(srv.url)
        lst = write_list(tmp_path / "list.csv", data)
        run_download(*download_cmd(lst, tmp_path / "dl", img2dataset))
        first = (tmp_path / "dl/downloaded.tsv").read_text()
        n = len(srv.requests)
        p = run_download(*download_cmd(lst, tmp_path / "dl", img2dataset))  # nothing deleted: every tar finished
        assert len(srv.requests) == n and "3 already finished" in p.stderr
        assert (tmp_path / "dl/downloaded.tsv").read_text() == first
        data[7] = (srv.url + "/img/chelsea.jpg", "the cat again")  # a URL of tar 2 changed: tar 2 only, again
        write_list(lst, data)
        p = run_download(*download_cmd(lst, tmp_path / "dl", img2dataset))
        assert "1 finished tars no longer match the list" in p.stderr
        assert sorted(p for p, _ in srv.requests[n:]) == ["/img/astronaut.jpg", "/img/chelsea.jpg"]
    df = scan_img2dataset(tmp_path / "dl/downloaded.tsv")
    assert "the cat again" in set(df["txt"]) and "a photo: horse" not in set(df["txt"])


def _sample_folder(path: Path, jpegs: dict[str, bytes], keys: dict[str, str]) -> Path:
    path.mkdir()
    for name, key in keys.items():
        (path / f"{key}.jpg").write_bytes(jpegs[name])
    return path


@pytest.mark.workflow
def test_workflow_killed_download_resumes_and_gives_the_features_of_a_folder(tmp_path, img2dataset, jpegs):
    """A real snakemake run over a urls source, killed (SIGKILL, the whole process group) while img2dataset is in
    tar 1: the rerun downloads nothing of the finished tar 0; the store holds the features of a folder of the same
    JPEGs, and the 404, the page and the timeout as failures with img2dataset's status."""
    wd = copy_workflow(tmp_path)
    with server(jpegs) as srv:
        write_list(wd / "urls.csv", rows(srv.url))
        cfg = {"datasets": {"web": {"source": "urls", "urls": "urls.csv", "shards": 2,
                                    "img2dataset": {"executable": img2dataset, "urls_per_tar": 3,
                                                    "timeout": TIMEOUT, "threads": 4}}},
               "extractors": {"effnet-lite0": {"batch_size": 1}},  # one image per forward: batch-independent bits
               "features": [{"datasets": ["web"], "extractors": ["effnet-lite0"]}]}
        (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
        target = "results/web/effnet-lite0.h5"
        exe = Path(sys.executable).with_name("snakemake")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        job = subprocess.Popen([str(exe), target], cwd=wd, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 240
            while "/slow.jpg" not in requested(srv):  # tar 1's first URL: tar 0 is finished, tar 1 is not
                assert job.poll() is None and time.time() < deadline, "the download never reached tar 1"
                time.sleep(0.02)
        finally:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        dl = wd / "resources/datasets/web"
        assert (dl / "00000_stats.json").exists() and not (dl / "00001_stats.json").exists()
        assert not (dl / "downloaded.tsv").exists()
        first = len(srv.requests)
        snakemake(wd, "--unlock")
        snakemake(wd, target)
        again = {p for p, _ in srv.requests[first:]}
    assert again == {"/page.html", "/slow.jpg", "/img/rocket.jpg", "/img/astronaut.jpg", "/img/horse.jpg"}  # tars 1, 2
    assert "1 already finished" in (wd / "logs/download_urls/web.log").read_text()

    from visfeat.sources.manifest import manifest_root
    from visfeat.sources.tars import scan_tar_rows

    path = wd / "results/web/manifest.parquet"  # a tar source's manifest lists its tars; their samples:
    manifest = scan_tar_rows(pd.read_parquet(path), manifest_root(path))
    keys = {txt.split(": ")[1]: i for i, txt in zip(manifest["image_id"], manifest["txt"])}
    good = {n: keys[n] for n in jpegs}
    folder = _sample_folder(tmp_path / "folder", jpegs, good)
    cfg["datasets"]["folder"] = {"source": "folder", "path": str(folder)}
    cfg["features"][0]["datasets"].append("folder")
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(wd, "results/folder/effnet-lite0.h5")
    web, same = visfeat.open(wd / target), visfeat.open(wd / "results/folder/effnet-lite0.h5")
    assert sorted(web) == sorted(same) == sorted(good.values())
    for i in same:  # the same decoded pixels through the same forward
        for f in ("global", "grid", "logits", "image_hw"):
            np.testing.assert_array_equal(web[i][f], same[i][f])
    failed = dict(web.failed)
    assert sorted(failed) == sorted(keys[n] for n in ("gone", "page", "slow"))
    assert failed[keys["gone"]] == "img2dataset failed_to_download: HTTP Error 404: Not Found"
    assert failed[keys["page"]] == "img2dataset failed_to_resize: Image decoding error"
    assert failed[keys["slow"]].startswith("img2dataset failed_to_download:") and "timed out" in failed[keys["slow"]]
    assert sorted(p.name for p in (wd / "results/web/effnet-lite0/shards").glob("*.h5")) == ["0.h5", "1.h5"]
