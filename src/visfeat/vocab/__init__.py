"""Class and attribute vocabularies the region presets ship, so ids read as words (torch-free).

`vg_objects.txt` (1600) and `vg_attributes.txt` (400): Visual Genome 1600-400-20, from bottom-up-attention
(py-bottom-up-attention demo/data/genome/1600-400-20/). Line k is id k (0-based, background excluded).
"""
from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

_VG = ("vg_objects.txt", "vg_attributes.txt")
PRESET_VOCABS = {"butd-r101-36": _VG, "butd-r101-10-100": _VG}  # preset -> (objects, attributes)


@lru_cache(maxsize=None)
def load(name: str) -> tuple[str, ...]:
    return tuple(files(__name__).joinpath(name).read_text(encoding="utf-8").splitlines())


def words_for(preset: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(object words, attribute words) of a preset, or None when it has no shipped vocabulary."""
    names = PRESET_VOCABS.get(preset)
    return None if names is None else (load(names[0]), load(names[1]))
