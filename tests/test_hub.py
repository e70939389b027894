"""Weights of the hub-named presets (extractors/hub.py): the fetch from a hub served on 127.0.0.1 (HF_ENDPOINT, as
the hub client reads it), the recorded revision and sha256, resume, the checksum check, and the offline message
an extraction gives when the file is not there."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from helpers.http_server import FileServer

from visfeat.extractors import hub
from visfeat.extractors.weights import WeightsMissing

DATA = bytes(range(256)) * 2048  # 512 KiB: the bytes do not matter to the fetch
SHA = hashlib.sha256(DATA).hexdigest()
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TIMM = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
TIMM_REPO = f"timm/{TIMM}"
OC_REPO = "timm/ViT-B-16-SigLIP2-256"


def hub_files(repo: str, file: str, commit: str = COMMIT) -> dict[str, bytes]:
    """What a hub serves for one file: the revision API (huggingface_hub's model_info) and the file at a commit."""
    return {f"/api/models/{repo}/revision/main": json.dumps({"id": repo, "sha": commit}).encode(),
            f"/{repo}/resolve/{commit}/{file}": DATA}


def tokenizer_files(repo: str, revision: str = COMMIT) -> dict[str, bytes]:
    """Two of the tokenizer files (a repo holds some of them; the others answer 404)."""
    return {f"/{repo}/resolve/{revision}/tokenizer.json": b'{"model": {}}',
            f"/{repo}/resolve/{revision}/tokenizer_config.json": b"{}"}


@pytest.fixture
def served(monkeypatch):
    with FileServer({**hub_files(TIMM_REPO, "model.safetensors"),
                     **hub_files(OC_REPO, "open_clip_model.safetensors"), **tokenizer_files(OC_REPO)}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


def test_fetch_pins_the_commit_and_records_it(tmp_path, served):
    root = tmp_path / "weights"
    dest = hub.fetch("timm", TIMM, None, root=root)
    assert dest == root / "timm" / "vit_tiny_patch16_224" / "augreg_in21k_ft_in1k" / "model.safetensors"
    assert dest.read_bytes() == DATA
    assert (f"/{TIMM_REPO}/resolve/{COMMIT}/model.safetensors", None) in served.requests
    rec = json.loads(hub.record_path(dest).read_text())
    assert (rec["repo"], rec["file"], rec["revision"], rec["requested_revision"], rec["sha256"]) == (
        TIMM_REPO, "model.safetensors", COMMIT, "main", SHA)
    # what an extraction then loads, with no network: the same file and its sha256
    assert hub.weights_file("timm", TIMM, None, None, str(root)) == (str(dest), SHA)
    assert hub.weights_file("timm", "vit_tiny_patch16_224", "augreg_in21k_ft_in1k", None, str(root)) == (str(dest), SHA)
    n = len(served.requests)
    assert hub.fetch("timm", TIMM, None, root=root) == dest and len(served.requests) == n  # there: not fetched again


def test_open_clip_file_and_the_workflow_path(tmp_path, served):
    options = {"model": "ViT-B-16-SigLIP2-256", "pretrained": "webli", "layers": []}
    path = hub.preset_file("openclip", options, tmp_path / "weights")
    assert path == str(tmp_path / "weights/openclip/ViT-B-16-SigLIP2-256/webli/open_clip_model.safetensors")
    assert hub.fetch_preset_file("openclip", path).read_bytes() == DATA
    # the text tower's Hugging Face tokenizer beside the weights (openclip.py reads it there, offline)
    folder = tmp_path / "weights/openclip/ViT-B-16-SigLIP2-256/webli"
    assert sorted(f.name for f in folder.iterdir()) == ["open_clip_model.safetensors",
                                                        "open_clip_model.safetensors.hub.json", "tokenizer.json",
                                                        "tokenizer_config.json"]
    tok = json.loads(hub.record_path(path).read_text())["tokenizer"]
    assert (tok["repo"], tok["revision"], sorted(tok["sha256"])) == (OC_REPO, COMMIT, ["tokenizer.json",
                                                                                       "tokenizer_config.json"])
    assert hub.weights_file("open_clip", "ViT-B-16-SigLIP2-256", "webli", None, str(tmp_path / "weights"))[0] == path
    assert hub.preset_file("clip-rn50", {"model": "RN50"}) is None  # a preset with its own weight files


def test_resumes_after_a_dropped_connection(tmp_path, served):
    path = f"/{TIMM_REPO}/resolve/{COMMIT}/model.safetensors"
    served.drop_after[path] = 100_000
    dest = hub.fetch("timm", TIMM, None, root=tmp_path, retries=3)
    assert dest.read_bytes() == DATA
    assert [r for r in served.requests if r[0] == path] == [(path, None), (path, "bytes=100000-")]


def test_sha256_checked_when_known_and_on_load(tmp_path, served):
    with pytest.raises(WeightsMissing) as e:
        hub.fetch("timm", TIMM, None, root=tmp_path, sha256="0" * 64, retries=1)
    assert "sha256 mismatch" in str(e.value) and SHA in str(e.value)
    dest = hub.fetch("timm", TIMM, None, root=tmp_path)
    dest.write_bytes(DATA[:-1] + b"\0")  # changed after the fetch recorded it
    with pytest.raises(ValueError, match="differs from the fetched file's"):
        hub.weights_file("timm", TIMM, None, None, str(tmp_path))


def test_a_mirror_without_the_hub_api_records_the_requested_revision(tmp_path, monkeypatch):
    with FileServer({f"/{TIMM_REPO}/resolve/main/model.safetensors": DATA}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url + "/")
        dest = hub.fetch("timm", TIMM, None, root=tmp_path)
    assert json.loads(hub.record_path(dest).read_text())["revision"] == "main"


def test_offline_message_names_repo_file_revision_and_place(tmp_path, monkeypatch):
    """An extraction with no file: no network is tried; the message says what to fetch and where to put it."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a request would fail differently
    with pytest.raises(WeightsMissing) as e:
        hub.weights_file("open_clip", "ViT-SO400M-16-SigLIP2-256", "webli", None, str(tmp_path))  # not pinned
    msg = str(e.value)
    dest = tmp_path / "openclip/ViT-SO400M-16-SigLIP2-256/webli/open_clip_model.safetensors"
    for part in ("timm/ViT-SO400M-16-SigLIP2-256", "open_clip_model.safetensors", "revision main", str(dest),
                 "open_clip_pytorch_model.bin", "visfeat fetch-weights --preset openclip", "--weights FILE"):
        assert part in msg, (part, msg)
    with pytest.raises(WeightsMissing, match="does not exist"):
        hub.weights_file("timm", TIMM, None, str(tmp_path / "nope.safetensors"))


def test_a_file_the_repo_lacks_points_at_its_other_file(tmp_path, monkeypatch):
    """Only the .bin on the hub: the fetch of the safetensors fails naming the other file to fetch instead."""
    bin_only = {f"/{OC_REPO}/resolve/main/open_clip_pytorch_model.bin": DATA, **tokenizer_files(OC_REPO, "main")}
    with FileServer(bin_only) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        with pytest.raises(WeightsMissing) as e:
            hub.fetch("open_clip", "ViT-B-16-SigLIP2-256", "webli", root=tmp_path, retries=1)
        assert "HTTP 404" in str(e.value) and "(or open_clip_pytorch_model.bin)" in str(e.value)
        dest = tmp_path / "openclip/ViT-B-16-SigLIP2-256/webli/open_clip_pytorch_model.bin"
        assert hub.fetch("open_clip", "ViT-B-16-SigLIP2-256", "webli", dest=dest).read_bytes() == DATA
    assert hub.weights_file("open_clip", "ViT-B-16-SigLIP2-256", "webli", None, str(tmp_path))[0] == str(dest)
    with pytest.raises(ValueError, match="not a file open_clip loads"):
        hub.fetch("open_clip", "ViT-B-16-SigLIP2-256", "webli", dest=tmp_path / "model.safetensors")


def test_cli_fetch_weights_for_a_generic_preset(tmp_path, served):
    """`visfeat fetch-weights` as the workflow's fetch_weights rule runs it (the path names model, tag, file)."""
    dest = tmp_path / "resources/weights/timm/vit_tiny_patch16_224/augreg_in21k_ft_in1k/model.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_ENDPOINT": served.url}
    p = subprocess.run([sys.executable, "-m", "visfeat", "fetch-weights", "--preset", "timm", "--dest", str(dest)],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert dest.read_bytes() == DATA and hub.record_path(dest).is_file()


def test_a_tokenizer_repo_without_tokenizer_files_fails_the_fetch(tmp_path, monkeypatch):
    with FileServer(hub_files(OC_REPO, "open_clip_model.safetensors")) as srv:  # weights, no tokenizer files
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        with pytest.raises(WeightsMissing, match=f"the tokenizer repo {OC_REPO} .* has none of tokenizer.json"):
            hub.fetch("open_clip", "ViT-B-16-SigLIP2-256", "webli", root=tmp_path, retries=1)
    assert not (tmp_path / "openclip/ViT-B-16-SigLIP2-256/webli/open_clip_model.safetensors").exists()  # tried again
