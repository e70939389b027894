"""The HDF5 feature store's names and layout: one file per dataset x extractor; shards have the same format, so merge
is concatenation. This module is the one home of those names: the writer, the readers, both merges, the importers,
`inspect`, the report and the incremental rerun take them from here, so the layout is read in one place.

Layout (constants below in brackets):
- per image, N rows each: `image_id` [IMAGE_ID] (N,) utf-8, unique; `image_path` [IMAGE_PATH] (N,) utf-8,
  relative to the dataset root ("" in imported stores); `image_hw` [IMAGE_HW] (N, 2) int32; `image_sha256`
  [IMAGE_SHA256] (N,) the hex sha256 of the image file's bytes (a tar member's bytes), "" where unknown (absent in
  stores written before it: read as "")
- fixed-size fields: (N, *shape); ragged fields: (M, *shape) rows + `{group}_offsets` [offsets_name] (N+1,) int64;
  a grid whose H x W varies per image also stores `{field}_hw` [hw_name] (N, 2) and reads back as (H, W, C)
- the `failed` group [FAILED]: `failed/image_id`, `failed/reason`, `failed/sha256` (no `sha256` before it)
- attributes [Attr]: format, format_version, fields (JSON), storage_dtype, created (set by the writer:
  WRITER_ATTRS; `created` is `SOURCE_DATE_EPOCH` when set, the reproducible-builds convention), preset, extractor,
  config (JSON), weights_sha256, visfeat_version, compression; from an extraction its `signature` and `request`
  (engine/run.py, engine/reuse.py); from an import `source_file`, `source_url`, `source_sha256`, `source_bytes`
  (interop/importers.py); `merge` = "virtual" on a virtual store, which also has the `virtual_sources` group
  [SOURCES]: per shard file its `path` (relative to the store's folder), `bytes` (its size at the merge) and
  `images` (its rows). Datasets carry no HDF5 timestamps and rows are written in fixed blocks of WRITE_BLOCK
  images whatever the calls to `append`, so the same rows give the same bytes (a virtual store's mapped fields
  are the exception: h5py creates virtual datasets with timestamps)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

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


IMAGE_ID = "image_id"


IMAGE_PATH = "image_path"


IMAGE_HW = "image_hw"


IMAGE_SHA256 = "image_sha256"


FAILED = "failed"  # group: one entry per image that could not be extracted


FAILED_ID = f"{FAILED}/image_id"


FAILED_REASON = f"{FAILED}/reason"


FAILED_SHA256 = f"{FAILED}/sha256"


def offsets_name(group: str) -> str:
    """The (N+1,) int64 offsets of ragged group `group`: image i's rows are offsets[i]:offsets[i + 1]."""
    return f"{group}_offsets"


def hw_name(field: str) -> str:
    """The (N, 2) (H, W) of a ragged grid field whose size varies per image: its rows read back as (H, W, C)."""
    return f"{field}_hw"


class Attr:
    """The store's attribute names (module docstring: which maker sets which)."""

    FORMAT = "format"
    FORMAT_VERSION = "format_version"
    FIELDS = "fields"
    STORAGE_DTYPE = "storage_dtype"
    CREATED = "created"
    PRESET = "preset"
    EXTRACTOR = "extractor"
    CONFIG = "config"
    WEIGHTS_SHA256 = "weights_sha256"
    VISFEAT_VERSION = "visfeat_version"
    COMPRESSION = "compression"
    SIGNATURE = "signature"
    REQUEST = "request"
    MERGE = "merge"  # "virtual" on a virtual store; absent on shards and copy-merged stores
    SOURCE_FILE = "source_file"  # an imported store's published file: name, URL, sha256, size
    SOURCE_URL = "source_url"
    SOURCE_SHA256 = "source_sha256"
    SOURCE_BYTES = "source_bytes"


WRITER_ATTRS = (Attr.FORMAT, Attr.FORMAT_VERSION, Attr.FIELDS, Attr.STORAGE_DTYPE, Attr.CREATED)  # StoreWriter
# sets these from its arguments; a copy merge passes every other attribute of the shards through


def decoded_attrs(h: h5py.File) -> dict[str, Any]:
    """The file's attributes, bytes as str (h5py returns fixed-length strings as bytes)."""
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h.attrs.items()}


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


MERGE_KEYS = (Attr.PRESET, Attr.EXTRACTOR, Attr.CONFIG, Attr.FIELDS, Attr.WEIGHTS_SHA256, Attr.STORAGE_DTYPE)
# equal in every shard of one extractor run: merge refuses shards that differ in any


VIRTUAL = "virtual"  # attrs[Attr.MERGE] of a virtual store


SOURCES = "virtual_sources"  # group: per shard file `path` (relative to the store's folder), `bytes` (its size at
# the merge), `images` (its rows)


SOURCES_PATH = f"{SOURCES}/path"


SOURCES_BYTES = f"{SOURCES}/bytes"


SOURCES_IMAGES = f"{SOURCES}/images"


def is_virtual(h: h5py.File) -> bool:
    v = h.attrs.get(Attr.MERGE, "")
    return (v.decode() if isinstance(v, bytes) else v) == VIRTUAL
