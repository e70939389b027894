"""Named presets: a small registry, importable without torch so config validation and `visfeat presets` are cheap.

Each preset names its builder as "module:function" (imported only when the extractor is built), its family
(which conda env runs it), its default options, its weight files, and where it comes from.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ..weights import WeightFile

# Options every preset accepts; they act on decoding, not on the model.
COMMON_OPTIONS: dict[str, Any] = {
    "exif": True,  # apply EXIF orientation (DESIGN.md: the stated exception to faithfulness); False = like PIL originals
    "max_pixels": 178_956_970,  # refuse larger images (decompression bombs) with a recorded reason
}


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    builder: str
    summary: str
    fields: str
    source: str
    license: str
    citation: str
    options: dict[str, Any] = field(default_factory=dict)
    weights: tuple[WeightFile, ...] = ()
    weights_note: str = ""
    check: str = ""  # "module:function" checking the resolved options, torch-free: bad config fails at start


def check_options(name: str, options: dict[str, Any] | None = None) -> None:
    """Run the preset's own option check (if any) on its resolved options; raises ValueError naming the problem."""
    p = get_preset(name)
    if p.check:
        module, func = p.check.split(":")
        getattr(importlib.import_module(module), func)(resolve_options(name, options))


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} registered twice")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    _ensure_loaded()
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def presets() -> list[str]:
    _ensure_loaded()
    return sorted(PRESETS)


def resolve_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Preset defaults + common options, overridden by `options`; an unknown key is an error naming it."""
    p = get_preset(name)
    merged = {**COMMON_OPTIONS, **p.options}
    for k, v in (options or {}).items():
        if k not in merged:
            raise KeyError(f"preset {name!r} has no option {k!r}; options: {', '.join(sorted(merged))}")
        merged[k] = v
    return merged


def load_extractor(preset: str, weights: str | None = None, device: str | None = None, amp: bool = False, **options):
    """Build a ready-to-run extractor. `weights`: a local file; None = the preset's default location/package."""
    p = get_preset(preset)
    opts = resolve_options(preset, options)
    module, func = p.builder.split(":")
    build = getattr(importlib.import_module(module), func)
    return build(preset=p, weights=weights, device=device, amp=amp, options=opts)


_LOADED = False


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from . import catalog  # noqa: F401  (registers every preset)
