"""bench/gpu_check.py, the GPU acceptance run, in its smoke mode on the CPU (`--device cpu --smoke`): the same
code as on a GPU (tiny models, few images), so the script cannot rot between GPU loans. Checks the JSON it writes:
its schema, every preset family compared and timed, every comparison within its bound, and `--budget-s`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"
sys.path.insert(0, str(REPO / "bench"))
from gpu_check import BOUNDS, FAMILIES, SMOKE_TIMINGS  # noqa: E402

CHECK_KEYS = {"section", "family", "check", "value", "bound", "ok", "note"}
TIMING_KEYS = {"name", "precision", "decode", "batch", "images_e2e", "images_forward", "e2e_img_s", "forward_img_s",
               "ratio", "fp32_forward_img_s", "amp_speedup", "stages_s", "gpu_util_mean", "gpu_util_max",
               "gpu_mem_max_mib", "smi_note"}
DEVICE_KEYS = {"kind", "name", "driver", "torch", "torchvision", "cuda", "cudnn", "cpu_cores", "torch_threads"}


def gpu_check(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    p = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--json", str(out), *args],
                       cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert out.exists(), p.stdout[-3000:] + p.stderr[-3000:]
    return p, json.loads(out.read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    # a budget no loaded 2-core machine reaches: this run must skip nothing (the budget has its own test)
    return gpu_check(tmp_path_factory.mktemp("gpu_check") / "report.json", "--budget-s", "1200")


def test_smoke_run_passes_and_prints_one_table(smoke):
    p, report = smoke
    failed = [c for c in report["checks"] if not c["ok"]]
    assert p.returncode == 0 and report["ok"] and not failed, failed or p.stderr[-3000:]
    assert "| section | family | check | value | bound | ok | note |" in p.stdout
    assert "ALL CHECKS PASS" in p.stdout
    print(f"\ngpu_check smoke: {len(report['checks'])} checks, {report['elapsed_s']:.0f} s")


def test_json_schema(smoke):
    _, report = smoke
    assert {"schema", "command", "mode", "device", "budget_s", "elapsed_s", "bounds", "checks", "timings", "skipped",
            "ok"} <= set(report)
    assert report["schema"] == 1 and report["mode"] == "smoke" and report["bounds"] == BOUNDS
    assert DEVICE_KEYS <= set(report["device"]) and report["device"]["kind"] == "cpu"
    for c in report["checks"]:
        assert set(c) == CHECK_KEYS and isinstance(c["ok"], bool) and isinstance(c["value"], float), c
    for t in report["timings"]:
        assert set(t) == TIMING_KEYS, t
        assert t["e2e_img_s"] > 0 and t["forward_img_s"] > 0 and t["fp32_forward_img_s"] > 0, t
        assert t["gpu_util_mean"] is None and t["smi_note"] == "device is not CUDA"  # no nvidia-smi on a CPU run
    assert report["skipped"] == []


def test_every_family_compared_and_timed(smoke):
    _, report = smoke
    by = {}
    for c in report["checks"]:
        by.setdefault((c["section"], c["family"]), []).append(c["check"])
    assert {f for s, f in by if s == "parity"} == set(FAMILIES)
    for fam in FAMILIES:
        checks = " / ".join(by[("parity", fam)])
        for what in ("fp32 vs cpu", "AMP vs fp32", "fp32 decode gpu vs pil", "AMP decode gpu vs pil"):
            assert what in checks, (fam, checks)
    assert ("decode", "nvjpeg") in by
    assert by[("oom", "clip-vit")] == ["batch halved on out of memory", "store equals a normal run at batch 2"]
    assert [t["name"] for t in report["timings"]] == list(SMOKE_TIMINGS)


def test_budget_skips_what_does_not_fit_and_says_so(tmp_path):
    p, report = gpu_check(tmp_path / "r.json", "--budget-s", "1", "--families", "effnet", "--timings", "clip-vit")
    assert p.returncode == 0 and report["checks"] == [] and report["timings"] == []
    assert [s["what"] for s in report["skipped"]] == ["decode", "parity effnet", "oom", "timing clip-vit"]
    assert all(s["reason"].startswith("budget: needs ~") for s in report["skipped"])
    assert "skipped: parity effnet (budget" in p.stdout
