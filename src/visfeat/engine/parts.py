"""The resume state of one output: each finished batch flushed as its own small file under `{out}.parts/`
(written to a temporary name, then renamed), so a job killed at any instant loses at most the batch in flight."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from visfeat.engine.items import Item
from visfeat.store.format import FieldSpec

if TYPE_CHECKING:  # torch is imported only where a model runs: a rerun with nothing to extract never loads it
    pass


def parts_signature(signature: str, items: list[Item]) -> str:
    """The resume state's identity: the extractor signature and the items to compute, in order, with content."""
    h = hashlib.sha256(signature.encode())
    for it in items:
        h.update(f"{it.image_id}\t{it.path}\t{it.sha256}\n".encode())
    return h.hexdigest()


class Parts:
    """The resume state of one output: `{out}.parts/` with meta.json and one npz per flushed batch."""

    def __init__(self, out: Path, signature: str):
        self.dir = out.with_name(out.name + ".parts")
        self.signature = signature
        meta = self.dir / "meta.json"
        if self.dir.exists():
            try:
                ok = json.loads(meta.read_text())["signature"] == signature
            except (OSError, ValueError, KeyError):
                ok = False
            if not ok:
                print(f"[visfeat] discarding {self.dir}: it was made with other inputs or options", file=sys.stderr)
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            self._atomic_write(meta, json.dumps({"signature": signature}).encode())
        for stale in self.dir.glob(".tmp-*"):
            stale.unlink(missing_ok=True)

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".tmp-{path.name}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def scan(self) -> tuple[list[Path], int]:
        """The flushed batches and how many items they cover, in one pass. Only a contiguous, loadable run
        b0000000.. counts: a file cut short by a machine crash (no fsync: renames of page-cache data survive a
        killed job, not a lost node), and everything after it or after a gap, is redone."""
        good, items = [], 0
        for k, f in enumerate(sorted(self.dir.glob("b*.npz"))):
            if f.name != f"b{k:07d}.npz":
                break
            try:
                with np.load(f) as z:
                    items += int(z["n_items"])
            except Exception:
                break
            good.append(f)
        return good, items

    def write(self, k: int, arrays: dict[str, np.ndarray]) -> None:
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self._atomic_write(self.dir / f"b{k:07d}.npz", buf.getvalue())

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def pack(specs: list[FieldSpec], items: list[Item], b: dict, outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    ok = b["ok"]
    arrays: dict[str, np.ndarray] = {
        "n_items": np.asarray(b["n_items"]),
        "image_id": np.asarray([items[i].image_id for i in ok], dtype=str),
        "image_path": np.asarray([items[i].path for i in ok], dtype=str),
        "image_hw": np.asarray(b["hw"], np.int32).reshape(-1, 2),
        "failed_id": np.asarray([items[i].image_id for i, _ in b["failed"]], dtype=str),
        "failed_reason": np.asarray([r for _, r in b["failed"]], dtype=str),
    }
    for s in specs:
        if s.ragged:
            arrays[f"field/{s.name}"] = (np.concatenate([o[s.name] for o in outs]) if outs
                                         else np.zeros((0, *s.shape), s.dtype))
            arrays[f"count/{s.ragged}"] = np.asarray([len(o[s.name]) for o in outs], np.int64)
        else:
            arrays[f"field/{s.name}"] = (np.stack([o[s.name] for o in outs]) if outs
                                         else np.zeros((0, *s.shape), s.dtype))
    return arrays
