"""What a run wrote, in a line a person reads at its end: a store's image count and the images that failed, read
cheaply (the `image_id` shape and the `failed` group, no feature data). The one home of that wording: the
extraction log's done line (engine/stats.py) and the workflow's end-of-run summary (Snakefile `onsuccess`) both
say it from here. h5py (through store/format.py) is imported only when a store is read: stats.py and the
Snakefile import this module without it."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

SHOWN_FAILED = 5  # failed ids a line names before "... and K more": enough to spot a pattern, short enough to read


@dataclass(frozen=True)
class StoreSummary:
    path: str
    images: int  # rows: the images that were extracted
    failed: tuple[str, ...]  # the ids of the images that failed, in store order

    def line(self) -> str:
        """`PATH: N images, M failed (a, b, ... and K more; visfeat inspect PATH)`."""
        return f"{self.path}: {self.images} images, " + failed_text(self.failed, self.path)


def read_summary(path: str | os.PathLike) -> StoreSummary:
    """The store's image count and failed ids; a store from before any failure has no `failed` group."""
    import h5py

    from visfeat.store.format import FAILED_ID, IMAGE_ID

    with h5py.File(path, "r") as f:
        failed = tuple(f[FAILED_ID].asstr()[:]) if FAILED_ID in f else ()
        return StoreSummary(os.fspath(path), int(f[IMAGE_ID].shape[0]), failed)


def failed_text(ids: Sequence[str], path: str | os.PathLike | None = None, shown: int = SHOWN_FAILED) -> str:
    """`M failed` and, when M > 0, the first `shown` ids in brackets, then how many more and where to read them
    all (`visfeat inspect` lists each id with its reason)."""
    if not ids:
        return "0 failed"
    names = ", ".join(ids[:shown])
    more = f" ... and {len(ids) - shown} more" if len(ids) > shown else ""
    where = f"; visfeat inspect {os.fspath(path)}" if path is not None else ""
    return f"{len(ids)} failed ({names}{more}{where})"
