"""Preset look-up and loading, importable without torch so config validation and `visfeat presets` are cheap.

The presets themselves (`preset.Preset`) are registered by the catalog, imported on the first look-up; each names
its builder as "module:function", imported only when the extractor is built.
"""
from __future__ import annotations

import difflib
import importlib
import numbers
from typing import Any, Mapping

from visfeat.extractors.preset import COMMON_OPTIONS, PRESETS, Preset, check_common

__all__ = ["COMMON_OPTIONS", "PRESETS", "OptionError", "Preset", "check_options", "get_preset", "load_extractor",
           "presets", "resolve_options"]


class OptionError(ValueError, KeyError):
    """A preset option's key or value that cannot be used: one line naming the key (`key`; `problem` is the
    message without the preset and key, for callers that name them their own way, as the config check does).
    A KeyError too: an unknown option has always been one."""

    def __init__(self, key: str, problem: str, message: str):
        super().__init__(message)
        self.key, self.problem = key, problem

    def __str__(self) -> str:  # KeyError's would quote the message
        return self.args[0]


def check_options(name: str, options: dict[str, Any] | None = None, instance: Mapping[str, str] | None = None) -> None:
    """Check the options' keys and value types, the common options' values, then run the preset's own check (if
    any) on the resolved options; raises OptionError (or the preset check's ValueError) naming the problem.
    `instance`: resolve_options'."""
    p = get_preset(name)
    resolved = resolve_options(name, options, instance)
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


def resolve_options(name: str, options: dict[str, Any] | None = None,
                    instance: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Preset defaults + common options, overridden by `options`, each of its default's type; an unknown key or
    a value of another type is an OptionError naming the key. `instance`: the extractor-instance options (name ->
    how the caller sets one, e.g. its flag), which are no preset options but are listed and suggested."""
    p = get_preset(name)
    merged = {**COMMON_OPTIONS, **p.options}
    for k, v in (options or {}).items():
        if instance and k in instance:  # e.g. `--set batch_size=4`: the right value in the wrong place
            how = instance[k] + ("" if isinstance(v, bool) else f" {v}")
            raise OptionError(k, "an instance option", f"{k} is an instance option, not a preset option: use {how}")
        problem = _unknown(k, merged, instance or {}) if k not in merged else _type_problem(v, merged[k])
        if problem:
            raise OptionError(k, problem, f"preset {name} option {k}: {problem}")
        merged[k] = v
    check_common(merged)
    return merged


def _unknown(key: str, options: Mapping[str, Any], instance: Mapping[str, str]) -> str:
    close = difflib.get_close_matches(key, [*options, *instance], n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    listed = f"preset options: {', '.join(sorted(options))}"
    if instance:
        listed += f"; instance options: {', '.join(instance)}"
    return f"unknown key ({hint}{listed})"


# what a value must be, by its default's type (bool before int: a bool is an int to Python, not to a config)
_KINDS: tuple[tuple[type | tuple[type, ...], str, Any], ...] = (
    (bool, "true or false", lambda v: isinstance(v, bool)),
    (numbers.Integral, "an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    (numbers.Real, "a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    (str, "a string", lambda v: isinstance(v, str)),
    ((list, tuple), "a list", lambda v: isinstance(v, (list, tuple))),
    (dict, "a mapping", lambda v: isinstance(v, dict)),
)


def _type_problem(value: Any, default: Any) -> str | None:
    """Why `value` cannot stand for `default` (None where it can). A None default takes any value: the
    preset's own check judges it."""
    for kind, words, ok in _KINDS:
        if isinstance(default, kind):
            return None if ok(value) else f"{value!r} is not {words} (default {default!r})"
    return None


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
