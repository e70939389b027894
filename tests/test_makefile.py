"""The Makefile: `make run` builds img2dataset's venv only when a `urls` source is configured; `make test` builds
it for tests/test_urls.py. Checked with `make -n` (prints the commands; runs only the recursive make line, which
asks scripts/urls_configured.py) on a copy of the checkout that uses this venv."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

I2D_BUILD = "-m venv .venv-img2dataset"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


@pytest.fixture
def checkout(tmp_path):
    for name in ("Makefile", "requirements.txt", "pyproject.toml", "envs", "scripts", "src", "workflow", "config"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    return tmp_path


def make_n(cwd: Path, target: str) -> str:
    p = subprocess.run(["make", "-n", target, f"VENV={Path(sys.executable).parent.parent}"], cwd=cwd,
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_default_run_does_not_build_img2datasets_venv(checkout):
    assert I2D_BUILD not in make_n(checkout, "run")
    assert I2D_BUILD in make_n(checkout, "test") and I2D_BUILD in make_n(checkout, "setup-urls")


def test_run_builds_it_when_a_urls_source_is_configured(checkout):
    cfg = yaml.safe_load((checkout / "config/config.yaml").read_text())
    (checkout / "urls.csv").write_text("url\nhttp://127.0.0.1/a.jpg\n")
    cfg["datasets"]["web"] = {"source": "urls", "urls": "urls.csv"}
    (checkout / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    out = make_n(checkout, "run")
    assert I2D_BUILD in out and ".venv-img2dataset/bin snakemake" in out  # built, then on PATH
