"""engine/stats.py: an extraction's measurements written as data beside its log and read back for the report."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

import visfeat
from visfeat.engine.stats import DONE_LINE, throughput


def test_throughput_is_the_extraction_stats(sample_dir, tmp_path):
    """`visfeat extract --stats` writes the run's counts and timings beside its log; the throughput is read from
    them, and for a log without its stats file (a run from before them) from the log's done line."""
    logs = tmp_path / "logs"
    logs.mkdir()

    def extract(job: str) -> None:
        with open(logs / f"{job}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "visfeat", "extract", "--preset", "effnet-lite0", "--device", "cpu",
                            "--workers", "0", "--images", str(sample_dir), "--out", str(tmp_path / "s.h5"),
                            "--stats", str(logs / f"{job}.stats.json")], stdout=log, stderr=subprocess.STDOUT,
                           check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})

    extract("0")
    stats = json.loads((logs / "0.stats.json").read_text())
    n = len(visfeat.open(tmp_path / "s.h5"))
    assert n > 0 and stats["images"] == n and stats["processed"] == n and stats["seconds"] > 0
    assert throughput([logs / "0.log"]) == [("0", n, stats["seconds"])]
    assert throughput([logs / "0.stats.json"]) == [("0", n, stats["seconds"])]

    line = DONE_LINE.search((logs / "0.log").read_text())  # the line run_extraction printed
    assert line and int(line["images"]) == n and int(line["reused"]) == 0 and int(line["failed"]) == 0
    (logs / "0.stats.json").unlink()
    assert throughput([logs / "0.log"]) == [("0", n, pytest.approx(stats["seconds"], abs=0.05))]
    (logs / "1.log").write_text("[visfeat] done: 7 images, 1 failed, 7 processed now in 2.5 s (2.80 img/s)\n")
    assert throughput([logs / "1.log", logs / "2.log"]) == [("1", 7, 2.5)]  # a line from before reruns; no 2.log

    extract("3")  # the same store again: found up to date, it measured nothing
    assert json.loads((logs / "3.stats.json").read_text())["skipped"] and throughput([logs / "3.log"]) == []


def test_done_line_names_the_failed_images(bad_dir, tmp_path):
    """`visfeat extract`'s last line names the images that failed and where to read every reason, and the parser
    still reads its counts."""
    folder, cases = bad_dir
    out = tmp_path / "bad.h5"
    p = subprocess.run([sys.executable, "-m", "visfeat", "extract", "--preset", "effnet-lite0", "--device", "cpu",
                        "--workers", "0", "--images", str(folder), "--out", str(out)], capture_output=True,
                       text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    last = p.stderr.strip().splitlines()[-1]
    failed = [i for i, _ in visfeat.open(out).failed]  # in store order
    assert sorted(failed) == sorted(i for i, reason in cases.items() if reason)
    assert f"{len(failed)} failed ({', '.join(failed)}; visfeat inspect {out})" in last
    m = DONE_LINE.search(last)
    assert m and int(m["failed"]) == len(failed) and int(m["images"]) == len(cases) - len(failed)
