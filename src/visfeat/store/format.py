"""The HDF5 feature store: one file per dataset x extractor; shards have the same format, so merge is concatenation.

Layout:
- `image_id` (N,) utf-8, unique; `image_path` (N,) relative to the dataset root; `image_hw` (N, 2) int32;
  `image_sha256` (N,) the hex sha256 of the image file's bytes (a tar member's bytes), "" where unknown
- fixed-size fields: (N, *shape); ragged fields: (M, *shape) rows + `{group}_offsets` (N+1,) int64
- `failed/image_id`, `failed/reason`, `failed/sha256`
- attributes: format, format_version, preset, extractor, config (JSON), fields (JSON), weights_sha256,
  visfeat_version, created (`SOURCE_DATE_EPOCH` when set: the reproducible-builds convention), and from an
  extraction its `signature` and `request` (engine/run.py). Datasets carry no HDF5 timestamps and rows are written
  in fixed blocks of WRITE_BLOCK images whatever the calls to `append`, so the same rows give the same bytes.

This module is the one home of those names: the writer, the readers, both merges, the importers and `inspect`
take them from here."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import h5py


@dataclass(frozen=True)
class FieldSpec:
    """One output field: name, per-image shape (per row when `ragged` names a group whose row count varies per
    image, e.g. regions) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    ragged: str | None = None


FORMAT = "visfeat-features"


FORMAT_VERSION = 1


STR = h5py.string_dtype("utf-8")


SHA = h5py.string_dtype("ascii", 64)  # hex sha256, fixed length


WRITE_BLOCK = 256  # images per write: the file's bytes depend on the rows, not on how callers batch them


def created_time() -> str:
    """Now, or `SOURCE_DATE_EPOCH` (seconds since 1970, UTC) when set, so a rebuild can be compared byte for byte
    (https://reproducible-builds.org/specs/source-date-epoch/)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(int(epoch)))
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class StoreError(ValueError):
    pass


def specs_to_json(specs: list[FieldSpec]) -> str:
    return json.dumps([asdict(s) for s in specs])


def specs_from_json(text: str) -> list[FieldSpec]:
    return [FieldSpec(d["name"], tuple(d["shape"]), d["dtype"], d["ragged"]) for d in json.loads(text)]


MERGE_KEYS = ("preset", "extractor", "config", "fields", "weights_sha256", "storage_dtype")


MODE_ATTR = "merge"  # attrs[MODE_ATTR] == "virtual" on a virtual store; absent on shards and copy-merged stores


SOURCES = "virtual_sources"  # group: per shard file `path` (relative to the store's folder), `bytes` (its size at
# the merge), `images` (its rows)


def is_virtual(h: h5py.File) -> bool:
    v = h.attrs.get(MODE_ATTR, "")
    return (v.decode() if isinstance(v, bytes) else v) == "virtual"
