"""Class and attribute vocabularies the region presets ship, so ids read as words (torch-free).

Which files a preset reads is the preset's (`Preset.vocab`, `Preset.labelmap`); this module reads them.
`vg_objects.txt` (1600) and `vg_attributes.txt` (400): Visual Genome 1600-400-20, from bottom-up-attention
(py-bottom-up-attention demo/data/genome/1600-400-20/). Line k is id k (0-based, background excluded).
VinVL's labelmap (`VG-SGG-dicts-vgoi6-clipped.json`: `idx_to_label` / `idx_to_attribute`, 1-based) and VMB's
category names (Pythia's `visual_genome_categories.json`) are not redistributed here: each is fetched with the
weights (a second file of the preset) and read from the weights
folder (`<weights root>/vinvl-x152c4/`; the workflow passes its configured `resources:`) when it is there.
`imagenet1k_classes.txt` (1000): the ImageNet-1k class names of classifier logits (`Preset.logit_names`), timm 1.0.31
`timm.data.ImageNetInfo("imagenet-1k").index_to_description(k)` (its package data timm/data/_info/
imagenet_synsets.txt + imagenet_synset_to_lemma.txt, WordNet lemmas), copied so the torch-free report reads them.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path


@lru_cache(maxsize=None)
def load(name: str) -> tuple[str, ...]:
    return tuple(files(__name__).joinpath(name).read_text(encoding="utf-8").splitlines())


WEIGHTS_ROOT = "resources/weights"  # the workflow's default `resources:` + /weights; `--weights-root` elsewhere


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


def _preset(name: str):
    """The preset of that name, or None (a store imported from elsewhere may name none of ours)."""
    from visfeat.extractors.registry import get_preset

    try:
        return get_preset(name)
    except KeyError:
        return None


def labelmap_path(preset: str, weights_root: str | Path = WEIGHTS_ROOT) -> Path | None:
    """Where a preset's labelmap is fetched to, or None when it has none."""
    p = _preset(preset)
    return Path(weights_root) / preset / p.labelmap if p is not None and p.labelmap else None


def logit_words(preset: str) -> tuple[str, ...] | None:
    """The class names of a preset's `logits`, or None when it ships none (or the store names no preset of ours)."""
    p = _preset(preset)
    return load(p.logit_names) if p is not None and p.logit_names else None


def words_for(preset: str, weights_root: str | Path = WEIGHTS_ROOT
              ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(object words, attribute words) of a preset, or None when it has no vocabulary here."""
    p = _preset(preset)
    if p is not None and p.vocab is not None:
        return load(p.vocab[0]), load(p.vocab[1])
    path = labelmap_path(preset, weights_root)
    return read_labelmap(path) if path is not None and path.exists() else None
