"""The README's preset table is generated from the catalog (scripts/preset_table.py): it must be up to date."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from visfeat.extractors.preset import PRESETS, Field, Preset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "preset_table.py"


@pytest.fixture(scope="module")
def preset_table():
    spec = importlib.util.spec_from_file_location("preset_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_table_is_the_catalogs(preset_table):
    written = preset_table.section(preset_table.README.read_text(encoding="utf-8"))
    assert written == preset_table.table(), "README.md preset table out of date: run python scripts/preset_table.py"
    assert preset_table.main(["--check"]) == 0


def test_a_preset_added_without_regenerating_fails_the_check(preset_table, monkeypatch):
    preset_table.table()  # the catalog is loaded before the dummy joins it
    monkeypatch.setitem(PRESETS, "dummy", Preset(
        name="dummy", env="timm", builder="none:none", summary="a preset the README does not list",
        outputs=(Field("global", (8,)),), source="-", license="-", citation="-"))
    written = preset_table.section(preset_table.README.read_text(encoding="utf-8"))
    assert "`dummy`" in preset_table.table() and written != preset_table.table()
    assert preset_table.main(["--check"]) == 1
