"""One GPU per job on a machine with several GPUs and no scheduler, with fake device lists."""
import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import copy_workflow, snakemake
from helpers.throttle import throttled_env

CLAIM = "from visfeat.engine.gpus import claim_gpu; import os, sys, time; claim_gpu(poll=0.2); " \
        "print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(float(sys.argv[1]))"


def _claimer(env, hold):
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(hold)], env=env, stdout=subprocess.PIPE, text=True)


def test_concurrent_jobs_get_distinct_gpus_and_third_waits(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1", "VISFEAT_GPU_LOCK_DIR": str(tmp_path)}
    a, b = _claimer(env, 3), _claimer(env, 3)
    time.sleep(1.5)
    c = _claimer(env, 0)  # both busy: waits until one is released
    got = sorted([a.stdout.readline().strip(), b.stdout.readline().strip()])
    assert got == ["0", "1"]
    t = time.time()
    third = c.stdout.readline().strip()
    assert third in ("0", "1") and time.time() - t > 0.5
    for p in (a, b, c):
        p.wait()


def test_single_or_scheduler_given_gpu_is_left_alone(tmp_path):
    for visible in ("3", ""):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
        out = subprocess.run([sys.executable, "-c", "from visfeat.engine.gpus import claim_gpu; print(claim_gpu())"],
                             env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "None"


@pytest.mark.workflow
def test_local_snakemake_jobs_each_claim_their_gpu(tmp_path):
    (tmp_path / "wf").mkdir()
    wd = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((wd / "config/config.yaml").read_text())
    cfg["extractors"]["effnet-lite0"] = {"workers": 0, "batch_size": 1}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "VISFEAT_GPU_LOCK_DIR": str(tmp_path / "locks"),
           **throttled_env(tmp_path / "throttle", 1.0)}
    snakemake(wd, "--cores", "2", env=env)
    claimed = sorted(
        line.split()[3] for i in (0, 1)
        for line in (wd / f"logs/extract/sample/effnet-lite0/{i}.log").read_text().splitlines()
        if line.startswith("[visfeat] claimed GPU")
    )
    assert claimed == ["0", "1"]
