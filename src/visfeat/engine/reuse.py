"""Which rows of a previous store a rerun may keep: an image's content hash and the extractor's signature.

A row (or a recorded failure) is reused when the image id, the sha256 of the image's bytes (the file, or the tar
member) and the extractor signature (everything besides the image that decides a row) are all unchanged.
`engine.request.request_digest` says the same of a command line without building the model, so a rerun with
nothing to extract never loads it. `run.run_extraction` decides with these; the store keeps `image_sha256`,
`failed/sha256` and the `signature` / `request` attributes."""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from visfeat.engine.items import Item
    from visfeat.extractors.base import Extractor


def extractor_signature(extractor: Extractor, storage_dtype: str, name: str) -> str:
    """What, besides the image, decides a row: preset, resolved config, weights sha256, fields, storage dtype,
    instance name and amp (autocast changes the numbers). Rows are reused only under the same signature."""
    return hashlib.sha256(json.dumps({
        "preset": extractor.preset, "config": extractor.config, "sha": extractor.weights_sha256,
        "fields": [asdict(f) for f in extractor.fields()], "storage_dtype": storage_dtype, "name": name,
        "amp": bool(getattr(extractor, "amp", False)),
    }, sort_keys=True).encode()).hexdigest()


class PreviousStore:
    """The store a previous run left at `out`: its signature and, per image id, its row or its failure."""

    def __init__(self, out: Path):
        from visfeat.store.format import IMAGE_PATH, IMAGE_SHA256, Attr
        from visfeat.store.reader import FeatureStore, digests, read_failures

        self.store = FeatureStore(out)
        a = self.store.attrs
        self.signature, self.request = str(a.get(Attr.SIGNATURE, "")), str(a.get(Attr.REQUEST, ""))
        self.compression = str(a.get(Attr.COMPRESSION, "none"))
        self.attrs = a
        h = self.store.h5
        sha = digests(h, IMAGE_SHA256, 0, len(self.store))
        self.rows = {i: (k, p, d) for k, (i, p, d) in
                     enumerate(zip(self.store.ids, h[IMAGE_PATH].asstr()[()], sha))}
        self.failed = {i: (r, d) for i, r, d in read_failures(self.store)}

    @staticmethod
    def open(out: Path) -> "PreviousStore | None":
        if not out.exists():
            return None
        try:
            return PreviousStore(out)
        except Exception as e:  # not a store, or one cut short: extract everything again
            print(f"[visfeat] {out} is not a readable store ({type(e).__name__}: {e}): extracting all of it",
                  file=sys.stderr)
            return None

    def reusable(self, it: Item, signature: str) -> bool:
        """A row or failure of the same image content under the same signature."""
        if not it.sha256 or not self.signature or self.signature != signature:
            return False
        if it.image_id in self.rows:
            return self.rows[it.image_id][2] == it.sha256
        return it.image_id in self.failed and self.failed[it.image_id][1] == it.sha256

    def current(self, items: list[Item], signature: str, request: str, compression: str | None) -> bool:
        """Exactly what a run would write now: same signature, request and compression, and the same images
        (ids, paths, contents; a manifest's known failures with the same reason), nothing more."""
        if (self.signature != signature or self.request != request or self.compression != (compression or "none")
                or len(self.rows) + len(self.failed) != len(items)):
            return False
        for it in items:
            if it.error:
                if self.failed.get(it.image_id, (None,))[0] != it.error:
                    return False
            elif not self.reusable(it, signature) or (it.image_id in self.rows
                                                       and self.rows[it.image_id][1] != it.path):
                return False
        return True

    def close(self) -> None:
        self.store.close()
