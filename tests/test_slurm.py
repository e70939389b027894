"""`snakemake --profile slurm all_features`, exactly as typed, on a real single-node SLURM cluster on localhost.

Set-up as the README tells cluster users: profiles/slurm linked into ~/.config/snakemake/slurm (HOME is a temp
dir here). Test overrides, in the copy's profiles/default (loaded automatically, as on any checkout): a 6 s first
status check instead of 40 s. Data: the sample photos in 2 shards, a tiny CLIP in the official layout.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import copy_workflow, snakemake
from helpers.slurm_cluster import LocalSlurm, unavailable_reason
from helpers.throttle import throttled_env
from helpers.stores import stores_identical

import visfeat

REASON = unavailable_reason()
pytestmark = [pytest.mark.slurm, pytest.mark.workflow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def _workflow(root: Path, tiny_clip) -> Path:
    root.mkdir(parents=True)
    wd = copy_workflow(root)
    weights = wd / "resources/weights/clip-vit-b32/ViT-B-32.pt"
    weights.parent.mkdir(parents=True)
    shutil.copy(tiny_clip["vit32"][0], weights)
    cfg = {
        "datasets": {"sample": {"source": "sample", "shards": 2}},
        "extractors": {"clip-vit-b32": {"batch_size": 2, "workers": 1}},  # 2 CPUs per job: this node has 2
        "features": [{"datasets": ["sample"], "extractors": ["clip-vit-b32"]}],
        "kmeans": {"grid": {"extractor": "clip-vit-b32", "train": ["sample"], "assign": ["sample"], "k": 8}},
    }
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield c
    c.stop()


def _run_as_typed(wd: Path, home: Path, env: dict | None = None, check: bool = True):
    exe = Path(sys.executable).with_name("snakemake")
    e = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    e.update({"HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})})
    cmd = "snakemake --profile slurm all_features"  # the card's command, exactly
    p = subprocess.run(cmd.split(), cwd=wd, env={**e, "PATH": f"{exe.parent}:{e['PATH']}"}, capture_output=True,
                       text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


def _home_with_profile(tmp: Path, wd: Path) -> Path:
    """The README's cluster set-up: ln -s "$PWD/profiles/slurm" ~/.config/snakemake/slurm"""
    home = tmp / "home"
    (home / ".config/snakemake").mkdir(parents=True)
    (home / ".config/snakemake/slurm").symlink_to(wd / "profiles/slurm")
    return home


def _rule_jobs(cluster: LocalSlurm, since: set[str]) -> list[dict]:
    out = []
    for j in cluster.jobs():
        if j["JobId"] in since:
            continue
        comment = j.get("Comment", "")
        j["rule"] = comment.split("_wildcards_")[0].removeprefix("rule_") if comment.startswith("rule_") else ""
        out.append(j)
    return out


def test_all_features_on_slurm(cluster, tiny_clip, tmp_path, capsys):
    wd = _workflow(tmp_path / "wf", tiny_clip)
    (wd / "profiles/default/config.yaml").write_text("cores: all\nslurm-init-seconds-before-status-checks: 6\n")
    home = _home_with_profile(tmp_path, wd)
    before = {j["JobId"] for j in cluster.jobs()}
    t0 = time.time()
    p = _run_as_typed(wd, home)
    took = time.time() - t0
    jobs = _rule_jobs(cluster, before)
    by_rule: dict[str, list[dict]] = {}
    for j in jobs:
        by_rule.setdefault(j["rule"], []).append(j)
    with capsys.disabled():
        print(f"\n[slurm] `snakemake --profile slurm all_features` took {took:.0f} s; jobs seen by slurmctld:")
        for j in jobs:
            print(f"[slurm]   job {j['JobId']:>6} {j['rule']:<10} partition={j['Partition']:<4} "
                  f"state={j['JobState']:<10} tres={j.get('TresPerJob', '-')} cpus={j['NumCPUs']}")
    assert len(by_rule.get("extract", [])) == 2, p.stdout[-3000:]
    for j in by_rule["extract"]:
        assert j["Partition"] == "gpu" and "gpu:1" in j.get("TresPerJob", "") and j["JobState"] == "COMPLETED"
    for rule in ("manifest", "merge"):
        assert by_rule.get(rule) and all(j["Partition"] == "cpu" for j in by_rule[rule]), rule
    assert "prepare_dataset" not in by_rule  # a localrule: the login node downloads
    for i in (0, 1):
        log = (wd / f"logs/extract/sample/clip-vit-b32/{i}.log").read_text()
        assert "CUDA_VISIBLE_DEVICES=0)" in log or "CUDA_VISIBLE_DEVICES=1)" in log  # SLURM gave it a GPU

    before = {j["JobId"] for j in cluster.jobs()}
    km = subprocess.run(["snakemake", "--profile", "slurm", "kmeans"], cwd=wd, capture_output=True, text=True,
                        env={**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert km.returncode == 0, km.stdout[-3000:] + km.stderr[-3000:]
    kjobs = _rule_jobs(cluster, before)
    with capsys.disabled():
        for j in kjobs:
            print(f"[slurm]   job {j['JobId']:>6} {j['rule']:<13} partition={j['Partition']:<4} "
                  f"state={j['JobState']:<10} tres={j.get('TresPerJob', '-')}")
    assert {j["rule"] for j in kjobs} == {"kmeans_train", "kmeans_assign", "report_kmeans"}
    for j in kjobs:
        if j["rule"] == "report_kmeans":
            assert j["Partition"] == "cpu"
        else:
            assert j["Partition"] == "gpu" and "gpu:1" in j.get("TresPerJob", "")
    assert visfeat.open(wd / "results/kmeans/grid/sample.h5")["chelsea"]["codes"].shape == (7, 7)

    # the same run locally gives the same merged file
    local = _workflow(tmp_path / "local", tiny_clip)
    snakemake(local, "--cores", "2")
    stores_identical(local / "results/sample/clip-vit-b32.h5", wd / "results/sample/clip-vit-b32.h5")

    # scancel an extraction job mid-shard: the profile's retry resubmits it and it resumes from its last batch
    reference = tmp_path / "ref.h5"
    shutil.copy(wd / "results/sample/clip-vit-b32.h5", reference)
    shutil.rmtree(wd / "results/sample/clip-vit-b32")
    (wd / "results/sample/clip-vit-b32.h5").unlink()
    before = {j["JobId"] for j in cluster.jobs()}
    proc = subprocess.Popen(["snakemake", "--profile", "slurm", "all_features"], cwd=wd,
                            env={**os.environ, "HOME": str(home), **throttled_env(tmp_path / "throttle", 2),
                                 "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shards = wd / "results/sample/clip-vit-b32/shards"
    deadline = time.time() + 300
    while not list(shards.glob("*.h5.parts/b*.npz")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    running = [j for j in _rule_jobs(cluster, before) if j["rule"] == "extract" and j["JobState"] == "RUNNING"]
    assert running, (cluster.jobs(), proc.communicate()[0][-3000:])
    victims = [f"{j['ArrayJobId']}_{j['ArrayTaskId']}" if j.get("ArrayTaskId") not in (None, "N/A") else j["JobId"]
               for j in running]
    subprocess.run(["scancel", *victims], check=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    logs = [(wd / f"logs/extract/sample/clip-vit-b32/{i}.log").read_text() for i in (0, 1)]
    assert any("resuming after" in log for log in logs), logs
    stores_identical(reference, wd / "results/sample/clip-vit-b32.h5")
    with capsys.disabled():
        print(f"[slurm] scancel {' '.join(victims)} (a running extract job) mid-shard: the retry resumed from "
              f"its last batch and the merged file is identical to the uninterrupted one")


def test_all_features_on_slurm_with_every_file_in_s3(cluster, s3_server, sample_dir, tmp_path, capsys):
    """The README's two sets of flags together: `snakemake --profile slurm all_features` with Snakemake's S3 storage
    (webdataset tars read from a bucket, every output written to it): the jobs run on SLURM's partitions, each
    staging its inputs and uploading its outputs itself, and nothing is left in the local results/."""
    from helpers.s3 import list_keys, make_bucket
    from helpers.webdataset import photo_tars

    make_bucket(s3_server, "slurm")
    for name, data in photo_tars(sample_dir).items():
        s3_server.client().put_object(Bucket="slurm", Key=f"cc/{name}", Body=data)
    (tmp_path / "wf").mkdir()
    wd = copy_workflow(tmp_path / "wf")
    (wd / "config/config.yaml").write_text(yaml.safe_dump({
        "datasets": {"cc": {"source": "webdataset", "path": "s3://slurm/cc/{00000..00001}.tar"}},
        "extractors": {"effnet-lite0": {"workers": 1}},
        "features": [{"datasets": ["cc"], "extractors": ["effnet-lite0"]}]}))
    (wd / "profiles/default/config.yaml").write_text("cores: all\nslurm-init-seconds-before-status-checks: 6\n")
    home = _home_with_profile(tmp_path, wd)
    before = {j["JobId"] for j in cluster.jobs()}
    exe = Path(sys.executable).with_name("snakemake")
    cmd = ["snakemake", "--profile", "slurm", "all_features", *s3_server.storage_args("s3://slurm/run")]
    p = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=900,
                       env={**{k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}, **s3_server.env(),
                            "HOME": str(home), "PATH": f"{exe.parent}:{os.environ['PATH']}"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    by_rule: dict[str, list[dict]] = {}
    for j in _rule_jobs(cluster, before):
        by_rule.setdefault(j["rule"], []).append(j)
    assert len(by_rule.get("extract", [])) == 2
    for j in by_rule["extract"]:
        assert j["Partition"] == "gpu" and "gpu:1" in j.get("TresPerJob", "") and j["JobState"] == "COMPLETED"
    assert all(j["Partition"] == "cpu" for j in by_rule["manifest"] + by_rule["merge"])
    keys = set(list_keys(s3_server, "slurm", "run/"))
    assert {"run/results/cc/manifest.parquet", "run/results/cc/effnet-lite0/shards/0.h5",
            "run/results/cc/effnet-lite0/shards/1.h5", "run/results/cc/effnet-lite0.h5"} <= keys
    local = [f for f in (wd / "results").rglob("*") if f.is_file()] if (wd / "results").exists() else []
    assert local == []
    s3_server.client().download_file("slurm", "run/results/cc/effnet-lite0.h5", str(tmp_path / "cc.h5"))
    with visfeat.open(tmp_path / "cc.h5") as store:
        assert len(store) == 4 and store.failed == []
    with capsys.disabled():
        print(f"[slurm+s3] {' '.join(cmd)}: {sum(map(len, by_rule.values()))} SLURM jobs, {len(keys)} objects "
              f"under s3://slurm/run/, nothing in the local results/")


def test_slurm_profile_dry_run_plans_gpu_jobs(tmp_path):
    """`snakemake --profile profiles/slurm -n all_features` on the default config: extraction on the GPU partition
    with gpu=1, the CPU steps on the CPU partition (that downloads stay local is checked on the real cluster)."""
    wd = copy_workflow(tmp_path)
    p = snakemake(wd, "--profile", "profiles/slurm", "-n", "all_features")
    blocks = {}
    for block in p.stdout.split("\n\n"):
        for line in block.splitlines():
            if line.startswith(("rule ", "localrule ")):
                blocks.setdefault(line.split()[1].rstrip(":"), []).append(block)
    assert len(blocks["extract"]) == 2
    for b in blocks["extract"]:
        assert "slurm_partition=gpu" in b and "gpu=1" in b
    for rule in ("manifest", "merge"):
        assert all("slurm_partition=cpu" in b for b in blocks[rule])
