"""visfeat: region, grid and global image features for vision-and-language research.

    import visfeat
    visfeat.presets()                                   # preset names
    ex = visfeat.load_extractor("clip-vit-b32")         # weights from resources/weights/ (or weights=FILE)
    feats = visfeat.open("results/sample/effnet-lite0.h5")
    feats["chelsea"]["global"]                          # per-image dict of numpy arrays
"""
from __future__ import annotations

from visfeat.version import __version__  # noqa: E402

from visfeat.extractors.registry import load_extractor, presets  # noqa: E402


def open(path):  # noqa: A001  (the documented one-liner: visfeat.open(path)[image_id])
    """Open a feature store: a read-only mapping image_id -> dict of numpy arrays."""
    from visfeat.store.reader import FeatureStore

    return FeatureStore(path)


def dataset(path, fields=None):
    """A torch Dataset over a store (safe with DataLoader workers); index by row or look up by image id."""
    from visfeat.store.torchdata import FeatureDataset

    return FeatureDataset(path, fields)


__all__ = ["__version__", "presets", "load_extractor", "open", "dataset"]
