"""The named encoder presets (extractors/named_encoders.py, registered by the catalog): each is its family's preset
with fixed options, declares the dims the pinned library builds (full-size architecture on the meta device: no
weights, no compute), and fetches its hub file at the pinned commit, refusing a file of another sha256 (a hub
served on 127.0.0.1)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import pytest
from helpers.http_server import FileServer

from visfeat.extractors import hub, named_encoders
from visfeat.extractors.named_encoders import NAMED
from visfeat.extractors.registry import PRESETS, check_options, get_preset, resolve_options
from visfeat.extractors.weights import WeightsMissing

DATA = bytes(range(256)) * 64  # the bytes do not matter to the fetch


@pytest.mark.parametrize("name", sorted(NAMED))
def test_a_named_preset_is_its_family_with_fixed_options(name):
    n, p = NAMED[name], get_preset(name)
    family = get_preset(n.family)
    assert (p.builder, p.env, p.text) == (family.builder, family.env, family.text)
    assert resolve_options(name).items() >= n.options.items()
    check_options(name, {"layers": [0, -1]})
    other = "ViT-B-32" if n.family == "openclip" else "vit_small_patch14_dinov2.lvd142m"
    with pytest.raises(ValueError, match=f"use preset {n.family}"):
        check_options(name, {"model": other})
    pin = n.pin
    assert re.fullmatch(r"[0-9a-f]{40}", pin.revision) and re.fullmatch(r"[0-9a-f]{64}", pin.sha256)
    assert (p.weights[0].filename, p.weights[0].sha256) == (pin.file, pin.sha256)
    assert p.weights[0].url == f"https://huggingface.co/{pin.repo}/resolve/{pin.revision}/{pin.file}"
    # the hub location the family reads from the pinned library's names is the pinned one
    loc = hub.hub_location(hub.HUB_PRESETS[name], n.options["model"], n.options.get("pretrained"))
    assert (loc.repo, loc.files[0]) == (pin.repo, pin.file)
    assert hub.preset_file(name, resolve_options(name)) == hub.preset_file(n.family, resolve_options(name))


@pytest.mark.parametrize("name", sorted(NAMED))
def test_declared_dims_are_the_librarys(name):
    """The extractor the family builds for the full-size model (meta device) declares the catalog's fields."""
    import torch

    n, p = NAMED[name], PRESETS[name]
    options = resolve_options(name)
    with torch.device("meta"):
        if n.family == "timm":
            import timm

            from visfeat.extractors.timm_encoder import TimmEncoder

            ext = TimmEncoder(name, options, "meta", "meta", False, timm.create_model(options["model"]))
        else:
            import open_clip

            from visfeat.extractors.openclip import OpenClipExtractor

            model = open_clip.create_model(options["model"], pretrained=None, pretrained_text=False, device="meta")
            ext = OpenClipExtractor(name, options, "meta", "meta", False, model)
    declared = {f.name: tuple(p.sizes.get(d, d) for d in f.shape) for f in p.outputs}
    assert {f.name: tuple(f.shape) for f in ext.fields()} == declared


@pytest.fixture
def dinov2(monkeypatch):
    """The hub serving dinov2-b14's file at its pinned commit, with bytes whose sha256 is not the pinned one."""
    pin = NAMED["dinov2-b14"].pin
    with FileServer({f"/{pin.repo}/resolve/{pin.revision}/{pin.file}": DATA}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv, pin


def test_fetch_uses_the_pinned_commit_and_refuses_another_sha256(tmp_path, dinov2):
    srv, pin = dinov2
    dest = hub.preset_file("dinov2-b14", resolve_options("dinov2-b14"), tmp_path / "weights")
    with pytest.raises(WeightsMissing, match="sha256"):
        hub.fetch_preset_file("dinov2-b14", dest)
    assert [path for path, _ in srv.requests] == [f"/{pin.repo}/resolve/{pin.revision}/{pin.file}"]  # no API call
    assert not (tmp_path / "weights" / "timm" / "vit_base_patch14_dinov2" / "lvd142m" / pin.file).exists()


def test_the_pinned_file_is_recorded_and_checked_on_load(tmp_path, dinov2, monkeypatch):
    """With the served bytes' sha256 as the pin, the named preset and the generic family fetch and load it."""
    srv, pin = dinov2
    sha = hashlib.sha256(DATA).hexdigest()
    monkeypatch.setitem(NAMED, "dinov2-b14", dataclasses.replace(NAMED["dinov2-b14"],
                                                                 pin=dataclasses.replace(pin, sha256=sha)))
    root = tmp_path / "weights"
    dest = hub.fetch_preset_file("timm", hub.preset_file("timm", resolve_options("dinov2-b14"), root))
    rec = json.loads(hub.record_path(dest).read_text())
    assert (rec["revision"], rec["requested_revision"], rec["sha256"]) == (pin.revision, pin.revision, sha)
    assert hub.weights_file("timm", pin.repo.split("/")[1], None, None, str(root)) == (str(dest), sha)
    # a file placed by hand (no record) is checked against the pin
    hub.record_path(dest).unlink()
    dest.write_bytes(DATA[:-1] + b"x")
    with pytest.raises(ValueError, match="sha256"):
        hub.weights_file("timm", pin.repo.split("/")[1], None, None, str(root))


def test_offline_message_names_the_pinned_revision(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    pin = NAMED["eva02-clip-l14-336"].pin
    msg = hub.missing_message("open_clip", "EVA02-L-14-336", "merged2b_s6b_b61k", tmp_path / pin.file)
    assert f"revision {pin.revision} (pinned: sha256 {pin.sha256})" in msg and pin.repo in msg


def test_check_functions_exist_only_for_named_presets():
    assert callable(getattr(named_encoders, "check_dinov2-b14"))
    with pytest.raises(AttributeError):
        getattr(named_encoders, "check_clip-rn50")


def test_registered_ones_left_the_waiting_list():
    """scripts/encoder_names.py NAMED_PRESETS lists the candidates still without a pin, and only those."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("encoder_names_script", REPO / "scripts" / "encoder_names.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert not set(script.NAMED_PRESETS) & set(NAMED)
