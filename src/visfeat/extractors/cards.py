"""What `visfeat presets` prints: a short entry per preset for the list, and one preset's card (fields, options
with their types and defaults, weights, licence, citation) for `visfeat presets NAME`. Read from the catalog's
declarations, torch-free, so the card cannot disagree with what the preset is."""
from __future__ import annotations

import difflib
import json
from typing import Any

from visfeat.extractors.preset import COMMON_OPTIONS, DECODE_MODES, Preset
from visfeat.extractors.registry import PRESETS, presets

# what a common option's values may be, beside its default (preset.py check_common enforces it)
_COMMON_CHOICES = {"decode": DECODE_MODES}


def find(names: list[str]) -> list[Preset]:
    """The named presets; an unknown name is a KeyError naming the closest known names."""
    known = presets()
    for name in names:
        if name not in PRESETS:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise KeyError(f"unknown preset {name!r}; {hint}`visfeat presets --names` lists all {len(known)}")
    return [PRESETS[n] for n in names]


def _weights(p: Preset) -> list[str]:
    lines = [f"{w.filename}  <{w.url}>" + (f"  sha256 {w.sha256}" if w.sha256 else "")
             + (f"  {w.size} bytes" if w.size else "") for w in p.weights]
    return ([p.weights_note] if p.weights_note else []) + lines


def entry(p: Preset) -> str:
    """The list's entry: what `visfeat presets` prints for each preset."""
    w = p.weights_note or ", ".join(f"{wf.filename} <{wf.url}>" for wf in p.weights)
    tags = ", ".join((f"env {p.env}",) + p.capabilities)
    return (f"{p.name}  [{tags}]\n  {p.summary}\n  fields: {p.fields}\n  weights: {w}\n"
            f"  source: {p.source}\n  licence: {p.license}\n  cite: {p.citation}\n")


def _type(value: Any) -> str:
    return "any" if value is None else type(value).__name__  # None: the preset computes it (docs/presets.md)


def card(p: Preset) -> str:
    """One preset in full: each field on its line, each option with its type and default (values written as in
    config.yaml), every weights file with its URL and checksum."""
    tags = ", ".join((f"env {p.env}",) + p.capabilities)
    lines = [f"{p.name}  [{tags}]", f"  {p.summary}", "  fields:"]
    lines += [f"    {f.describe(p.sizes)}" for f in p.outputs]
    if p.outputs_note:
        lines.append(f"    ({p.outputs_note})")
    options = {**p.options, **COMMON_OPTIONS}
    width = max(map(len, options))
    lines.append("  options (config: extractors.NAME.KEY; visfeat extract --set KEY=VALUE):")
    for k, v in options.items():
        common = "  (every preset)" if k in COMMON_OPTIONS else ""
        choices = f"  one of {', '.join(_COMMON_CHOICES[k])}" if k in _COMMON_CHOICES else ""
        lines.append(f"    {k:<{width}}  {_type(v):<5}  {json.dumps(v)}{choices}{common}")
    lines.append("  weights:")
    lines += [f"    {w}" for w in _weights(p)] or ["    none"]
    lines += [f"  source: {p.source}", f"  licence: {p.license}", f"  cite: {p.citation}"]
    return "\n".join(lines) + "\n"
