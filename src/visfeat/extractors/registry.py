"""Preset look-up and loading, importable without torch so config validation and `visfeat presets` are cheap.

The presets themselves (`preset.Preset`) are registered by the catalog, imported on the first look-up; each names
its builder as "module:function", imported only when the extractor is built.
"""
from __future__ import annotations

import importlib
from typing import Any

from visfeat.extractors.preset import COMMON_OPTIONS, PRESETS, Preset, check_common

__all__ = ["COMMON_OPTIONS", "PRESETS", "Preset", "check_options", "get_preset", "load_extractor", "presets",
           "resolve_options"]


def check_options(name: str, options: dict[str, Any] | None = None) -> None:
    """Check the common options and run the preset's own check (if any) on the resolved options; raises
    ValueError naming the problem."""
    p = get_preset(name)
    resolved = resolve_options(name, options)  # checks the common options' values
    if p.check:
        module, func = p.check.split(":")
        getattr(importlib.import_module(module), func)(resolved)


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
    check_common(merged)
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
        from visfeat.extractors import catalog  # noqa: F401  (registers every preset)
