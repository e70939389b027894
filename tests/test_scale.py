"""bench/scale.py's code paths on a tiny dataset, so the benchmark cannot rot: every per-size step in its own
process, the manifests of a folder and of tars; the plan (snakemake) is left to the workflow tests."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench/scale.py"


def test_scale_bench_runs_every_step_on_a_tiny_dataset(tmp_path):
    steps = "manifest_folder,manifest_tars,slice,merge_copy,cp,merge_virtual,open_read,report,kmeans_sample"
    p = subprocess.run([sys.executable, str(BENCH), "--sizes", "300,3k", "--shards", "7", "--files", "50",
                        "--tars", "5", "--steps", steps, "--dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    for step in steps.split(","):
        assert any(f"| {step} |" in line for line in table), step
    assert "| 3k | slice |" in p.stdout and "slice: 3k / 300: time" in p.stdout
    assert "rows 3000" not in p.stdout and "| 50 | manifest_folder |" in p.stdout and "rows 50" in p.stdout
    assert "| 3k | merge_virtual |" in p.stdout and "vectors 3000" in p.stdout
    assert list(tmp_path.iterdir()) == []  # the data is deleted
