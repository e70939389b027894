"""What a preset is, and the table presets are registered in (torch-free: config checks and `visfeat presets`
read it without building anything). The catalog fills the table; the registry looks presets up and builds them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from visfeat.extractors.weights import WeightFile

# Options every preset accepts; they act on decoding, not on the model.
COMMON_OPTIONS: dict[str, Any] = {
    # Apply EXIF orientation (images as people see them): the one stated exception to reproducing the original
    # extractors, which read pixels with PIL and ignore it. False = like those originals.
    "exif": True,
    "max_pixels": 178_956_970,  # refuse larger images (decompression bombs) with a recorded reason
    # JPEG decoding: "pil" decodes every pixel (the originals' path); "draft" decodes at the smallest DCT scale
    # (1/2, 1/4, 1/8) still at least the size the preset resizes to, then resizes as "pil" does; "gpu" decodes
    # batches of JPEGs on the model's device and preprocesses there (docs/presets.md "Decode modes")
    "decode": "pil",
}
DECODE_MODES = ("pil", "draft", "gpu")


def check_common(options: dict[str, Any]) -> None:
    """The common options' values (every preset has them); raises ValueError naming the allowed ones."""
    decode = options.get("decode", "pil")
    if decode not in DECODE_MODES:
        raise ValueError(f"decode {decode!r} unknown; decode modes: {', '.join(DECODE_MODES)}")

# How many rows a ragged group has per image, as the field descriptions write it.
ROWS = {"regions": "K", "cells": "H*W"}


@dataclass(frozen=True)
class Field:
    """One output field as the catalog declares it (the extractor's `fields()` must agree). A dim is an int,
    fixed by the preset's options, or the name of a size read from the weights file (`Preset.sizes` holds its
    value with the preset's official weights). `ragged`: per-row shape of a group whose row count varies."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    ragged: str | None = None

    def describe(self, sizes: dict[str, int]) -> str:
        dims = ([ROWS[self.ragged]] if self.ragged else []) + [str(sizes.get(d, d)) for d in self.shape]
        shape = "" if not dims else f" ({dims[0]},)" if len(dims) == 1 else f" ({', '.join(dims)})"
        return self.name + shape + ("" if self.dtype == "float32" else f" {self.dtype}")


# The conda envs an extraction job can run in: `envs/{env}.yaml` (tests/test_envs.py checks each file holds what
# its presets' builders import). The workflow's extract rule takes the preset's env from here.
ENVS = ("clip", "detector", "timm")


@dataclass(frozen=True)
class Preset:
    """One preset. `env` says where it runs; the capability flags say what it can do, so config checks and the
    workflow key on the capability, never on the env (tests/test_preset.py checks each flag against the built
    extractor)."""

    name: str
    env: str  # the conda env that runs it: one of ENVS
    builder: str  # "module:function", imported only when the extractor is built
    summary: str  # one line: what it extracts (also the README's preset table)
    outputs: tuple[Field, ...]  # with the default options
    source: str
    license: str
    citation: str
    sizes: dict[str, int] = field(default_factory=dict)  # the official weights' value of each named dim
    outputs_note: str = ""  # what other options change in the outputs
    options: dict[str, Any] = field(default_factory=dict)
    weights: tuple[WeightFile, ...] = ()
    weights_note: str = ""
    check: str = ""  # "module:function" checking the resolved options, torch-free: bad config fails at start
    vocab: tuple[str, str] | None = None  # shipped (objects, attributes) word lists in visfeat/vocab/
    labelmap: str = ""  # the file among `weights` that names the ids (fetched beside the weights)
    logit_names: str = ""  # shipped word list in extractors/vocab/ naming the `logits` output (line k: class k)
    takes_boxes: bool = False  # forced-boxes mode: `set_given_boxes`, the config's `boxes:`, `--boxes`
    text: bool = False  # a text tower: `encode_text`, `visfeat text`, the config's `text:` section

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The capability flags that are set, by name (`visfeat presets` prints them)."""
        return tuple(f for f in CAPABILITIES if getattr(self, f))

    @property
    def fields(self) -> str:
        """The outputs in words, with the official weights' sizes."""
        words = ", ".join(f.describe(self.sizes) for f in self.outputs)
        return f"{words}; {self.outputs_note}" if self.outputs_note else words


# every bool field of Preset is a capability flag
CAPABILITIES = tuple(f.name for f in dataclasses.fields(Preset) if f.type == "bool")

PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    """Add a preset to the table; its declarations are checked here, so a bad entry fails at import."""
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} registered twice")
    if preset.env not in ENVS:
        raise ValueError(f"preset {preset.name!r}: env {preset.env!r} unknown; envs: {', '.join(ENVS)}")
    named = {d for f in preset.outputs for d in f.shape if isinstance(d, str)}
    if named != set(preset.sizes):
        raise ValueError(f"preset {preset.name!r}: named dims {sorted(named)} but sizes for {sorted(preset.sizes)}")
    if preset.labelmap and preset.labelmap not in {w.filename for w in preset.weights}:
        raise ValueError(f"preset {preset.name!r}: labelmap {preset.labelmap} is not one of its weight files")
    PRESETS[preset.name] = preset
    return preset
