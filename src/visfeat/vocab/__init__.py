"""Class and attribute vocabularies the region presets ship, so ids read as words (torch-free).

`vg_objects.txt` (1600) and `vg_attributes.txt` (400): Visual Genome 1600-400-20, from bottom-up-attention
(py-bottom-up-attention demo/data/genome/1600-400-20/). Line k is id k (0-based, background excluded).
VinVL's labelmap (`VG-SGG-dicts-vgoi6-clipped.json`: `idx_to_label` / `idx_to_attribute`, 1-based) and VMB's
category names (Pythia's `visual_genome_categories.json`) are not redistributed here: each is fetched with the
weights (a second file of the preset) and read from the weights
folder (`<weights root>/vinvl-x152c4/`; the workflow passes its configured `resources:`) when it is there.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

_VG = ("vg_objects.txt", "vg_attributes.txt")
PRESET_VOCABS = {"butd-r101-36": _VG, "butd-r101-10-100": _VG}  # preset -> (objects, attributes)


@lru_cache(maxsize=None)
def load(name: str) -> tuple[str, ...]:
    return tuple(files(__name__).joinpath(name).read_text(encoding="utf-8").splitlines())


WEIGHTS_ROOT = "resources/weights"  # the workflow's default `resources:` + /weights; `--weights-root` elsewhere
PRESET_LABELMAPS = {  # fetched beside the weights
    "vinvl-x152c4": "VG-SGG-dicts-vgoi6-clipped.json",  # scene_graph_benchmark's labelmap
    "vmb-x152": "visual_genome_categories.json",  # Pythia's, named in MMF extract_features_vmb.py
    "vmb-x101": "visual_genome_categories.json",
}


def read_labelmap(path: str | Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A labelmap JSON -> (objects, attributes) indexed by our 0-based ids. scene_graph_benchmark's
    (`idx_to_label` / `idx_to_attribute`, 1-based: file id - 1) or Pythia's COCO-style `categories` (ids as MMF's
    VMB `objects` without --background, 0-based; no attributes)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if "categories" in data:
        table = {int(c["id"]): c["name"] for c in data["categories"]}
        return tuple(table.get(i, str(i)) for i in range(max(table, default=-1) + 1)), ()

    def words(key: str) -> tuple[str, ...]:
        table = {int(k): v for k, v in data.get(key, {}).items()}
        return tuple(table.get(i, str(i - 1)) for i in range(1, max(table, default=0) + 1))

    return words("idx_to_label"), words("idx_to_attribute")


def words_for(preset: str, weights_root: str | Path = WEIGHTS_ROOT
              ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(object words, attribute words) of a preset, or None when it has no vocabulary here."""
    names = PRESET_VOCABS.get(preset)
    if names is not None:
        return load(names[0]), load(names[1])
    if preset in PRESET_LABELMAPS:
        path = Path(weights_root) / preset / PRESET_LABELMAPS[preset]
        return read_labelmap(path) if path.exists() else None
    return None
