"""Webdataset tars read in place (img2dataset's layout): brace patterns, each tar's image members by offset, their
txt/json members as the manifest's captions, and the failed URLs of a `urls` source as rows that fail."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from visfeat.sources.folder import DatasetError
from visfeat.sources.images import header_size
from visfeat.sources.manifest import HEADER_COLUMNS

WEBDATASET_IMAGES = ("jpg", "jpeg", "png", "webp")  # a sample's image: the first of these members it has


WEBDATASET_TEXT = ("txt", "json")  # copied into the manifest: img2dataset's caption; url, original width/height


# webdataset's base_plus_ext: the key is the member name up to the first dot of its file name
_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")

BLOCK = 512  # a tar header and the unit of its data (POSIX ustar)
_ZERO_BLOCK = bytes(BLOCK)


def expand_braces(pattern: str) -> list[str]:
    """webdataset's shard notation, left to right: `{00000..00331}` (zero-padded as written) and `{a,b}`."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", m.group(1))
    if r:
        a, b = r.groups()
        width = len(a) if len(a) == len(b) else 0
        choices = [str(k).zfill(width) for k in range(int(a), int(b) + 1)]
    else:
        choices = m.group(1).split(",")
    return [p for c in choices for p in expand_braces(pattern[:m.start()] + c + pattern[m.end():])]


def tar_paths(path: str | list[str]) -> list[str]:
    """A webdataset source's tars, in shard order: a brace pattern, a list of tars (or patterns), a folder of
    `.tar` files (sorted by name), or one tar."""
    if isinstance(path, (list, tuple)):
        return [p for x in path for p in tar_paths(x)]
    if "{" in path:
        return expand_braces(path)
    if os.path.isdir(path):
        tars = sorted(f for f in os.listdir(path) if f.endswith(".tar") and not f.startswith("."))
        if not tars:
            raise DatasetError(f"webdataset folder {path} has no .tar files")
        return [os.path.join(path, f) for f in tars]
    return [path]


class _Member(NamedTuple):
    """What the scan uses of a file member: its name and where its data is."""

    name: str
    offset_data: int
    size: int


def _plain_members(tar: str) -> list[_Member] | None:
    """The file members of a whole tar whose headers are all plain (ustar/GNU/v7 regular files and directories,
    names in the 100-byte field, octal sizes), read by slicing each 512-byte header: what img2dataset and
    webdataset write, several times faster than tarfile's TarInfo per member. None for anything else (pax or
    long-name headers, a bad checksum, a cut tar, no end-of-archive blocks): `_tar_members` then asks tarfile, whose
    reading and error messages stay the reference."""
    members = []
    size = os.path.getsize(tar)
    with open(tar, "rb") as f:
        offset = 0
        while True:
            if offset + BLOCK > size:
                return None
            f.seek(offset)
            h = f.read(BLOCK)
            if h == _ZERO_BLOCK:
                if offset == 0:
                    return None  # an empty archive: tarfile calls it unreadable
                tail = f.read(1 << 20)  # the end check of _tarfile_members: zero blocks to the end
                return members if len(tail) >= BLOCK and not tail.strip(b"\0") else None
            kind = h[156:157]
            # tarfile prefixes the name with a non-empty 345:500 field (ustar's long names; GNU's atime: rare)
            if kind not in (b"0", b"\0", b"5") or h[124] & 0x80 or h[345] != 0:
                return None
            unsigned = 256 + sum(h[:148]) + sum(h[156:])
            try:
                chksum = int(h[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
                n = int(h[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            except ValueError:
                return None
            if chksum != unsigned:
                return None
            data = offset + BLOCK
            if data + n > size:
                return None
            name = h[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")  # tarfile's nts
            if kind != b"5" and not (kind == b"\0" and name.endswith("/")):  # tarfile: both are directories
                members.append(_Member(name, data, n))
            offset = data + -(-n // BLOCK) * BLOCK


def _tar_members(tar: str) -> tuple[list, str | None]:
    """The file members of one tar from their headers, in order, and why the tar ends early (None: it is whole).
    Nothing is unpacked: the headers are read (`_plain_members`, else tarfile), the data later at each member's
    offset."""
    try:
        plain = _plain_members(tar)
    except OSError:  # tarfile says why, as for every other tar it reads
        plain = None
    return (plain, None) if plain is not None else _tarfile_members(tar)


def _tarfile_members(tar: str) -> tuple[list, str | None]:
    """`_tar_members` by tarfile: any tar, and why it ends early."""
    import tarfile

    members, broken = [], None
    try:
        with tarfile.open(tar, mode="r:") as t:
            while True:
                try:
                    m = t.next()
                except tarfile.TarError as e:  # a header cut short or the data of the last member missing
                    broken = f"{type(e).__name__}: {e}"
                    break
                if m is None:
                    break
                if m.isfile():
                    members.append(m)
            end = t.offset
    except (tarfile.TarError, OSError) as e:
        return [], f"unreadable tar: {type(e).__name__}: {e}"
    if broken is None:  # a whole tar ends in zero blocks; a cut one can end quietly inside a header
        with open(tar, "rb") as f:
            f.seek(end)
            tail = f.read(1 << 20)
        if len(tail) < 1024 or tail.strip(b"\0"):
            broken = "no end-of-archive blocks"
    if broken is None:
        return members, None
    if members and members[-1].offset_data + members[-1].size > os.path.getsize(tar):
        broken += f" (it ends inside {members[-1].name})"
    return members, f"truncated tar: {broken}"


def _read_at(f, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def scan_webdataset(tars: list[str], tars_per_shard: int = 1, apply_exif: bool = True, headers: bool = True):
    """The samples of some tars: one row per sample, id = its `__key__` (unique across these tars), in tar order.
    Columns image_id, path, bytes, width, height (from the image's header; -1 with headers=False: a shard job's
    decode measures them), `shard` (tar index // tars_per_shard), `tar` (absolute path), `offset` of the image
    member's data (-1: none), `error` (why the row cannot be extracted, else ""), and the `txt` and `json` members'
    text. A sample without an image, and a truncated or unreadable tar (a row of its own, id = the tar's file name),
    are rows whose extraction records the error."""
    import pandas as pd

    rows, seen = [], {}

    def row(image_id, path, size=-1, w=-1, h=-1, shard=0, tar="", offset=-1, error="", txt="", js=""):
        rows.append((image_id, path, size, w, h, shard, tar, offset, error, txt, js))

    for k, tar in enumerate(tars):
        shard, name, abstar = k // tars_per_shard, os.path.basename(tar), os.path.abspath(tar)
        members, broken = _tar_members(tar)
        samples: dict[str, dict[str, object]] = {}
        for m in members:
            mm = _MEMBER.match(m.name)
            if not mm:  # webdataset skips members without an extension too
                continue
            key, ext = mm.group(1), mm.group(2).lower()
            if key in seen and seen[key][0] != k:
                raise DatasetError(f"webdataset __key__ {key!r} is in both {seen[key][1]} and {tar}")
            seen[key] = (k, tar)
            if ext in samples.setdefault(key, {}):
                raise DatasetError(f"webdataset __key__ {key!r} has two {ext} members in {tar}")
            samples[key][ext] = m
        with open(tar, "rb") if samples else io.BytesIO() as f:  # an unreadable tar has no samples
            for key, exts in samples.items():
                text = {e: _read_at(f, exts[e].offset_data, exts[e].size).decode("utf-8", "replace")
                        for e in WEBDATASET_TEXT if e in exts}
                image = next((exts[e] for e in WEBDATASET_IMAGES if e in exts), None)
                if image is None:
                    row(key, f"{name}/{key}", shard=shard, tar=abstar, txt=text.get("txt", ""),
                        js=text.get("json", ""), error=f"no image member ({', '.join(WEBDATASET_IMAGES)}) in {name}")
                    continue
                w = h = -1
                try:
                    if headers:
                        w, h = header_size(io.BytesIO(_read_at(f, image.offset_data, image.size)), apply_exif)
                except Exception:  # unreadable header: extraction records the reason
                    w = h = -1
                row(key, f"{name}/{image.name}", image.size, w, h, shard, abstar, image.offset_data,
                    txt=text.get("txt", ""), js=text.get("json", ""))
        if broken is not None:
            if name in seen:
                raise DatasetError(f"webdataset __key__ {name!r} is also the name of the broken tar {tar}")
            seen[name] = (k, tar)
            row(name, name, shard=shard, tar=abstar, error=broken)
    df = pd.DataFrame(rows, columns=[*HEADER_COLUMNS, "shard", "tar", "offset", "error", "txt", "json"])
    return df.astype({"bytes": "int64", "width": "int32", "height": "int32", "shard": "int64", "offset": "int64"})


def tar_root(tars: list[str]) -> str:
    """The folder a tar source's manifest names its tars relative to (the extraction's --root): the deepest folder
    holding them all, as given (relative stays relative), so a job can read the same tars staged elsewhere."""
    dirs = [os.path.normpath(os.path.dirname(t) or ".") for t in tars]
    try:
        return os.path.commonpath(dirs) or "." if dirs else "."
    except ValueError:  # absolute and relative paths mixed
        return os.path.commonpath([os.path.abspath(d) for d in dirs])


def tar_rows(tars: list[str], root: str, shards: list[int], failures: list[str] | None = None):
    """A tar source's manifest rows, from the tar names alone (no tar is opened): `tar` relative to `root`, the
    tar's `shard`, and for a urls source `failures`: its img2dataset parquet of failed URLs, relative to `root`."""
    import pandas as pd

    cols = {"tar": [os.path.relpath(t, root) for t in tars], "shard": shards}
    if failures is not None:
        cols["failures"] = [os.path.relpath(f, root) if f else "" for f in failures]
    return pd.DataFrame(cols).astype({"shard": "int64"})


def scan_tar_rows(rows, root: str | os.PathLike, apply_exif: bool = True, headers: bool = False):
    """The samples of a tar source's manifest rows (one shard's, read by its job), as scan_webdataset gives them
    plus each tar's failed URLs (after its members) where the rows name a `failures` parquet; each sample takes its
    tar's `shard`. Tars resolve against `root`."""
    import pandas as pd

    tars = [os.path.join(root, t) for t in rows["tar"]]
    df = scan_webdataset(tars, 1, apply_exif, headers)  # `shard`: the tar's position, until mapped below
    failures = list(rows["failures"]) if "failures" in rows.columns else []
    failed = [r for k, f in enumerate(failures) if f for r in _failed_urls(tars[k], os.path.join(root, f), k)]
    if failed:
        df = pd.concat([df, pd.DataFrame(failed, columns=df.columns)], ignore_index=True)
        df = df.sort_values("shard", kind="stable").reset_index(drop=True)  # each tar's failures after its members
        dup = df["image_id"].duplicated(keep=False)
        if dup.any():
            raise DatasetError(f"img2dataset keys seen twice in {root}: {' '.join(df.loc[dup, 'image_id'][:10])}")
    df["shard"] = np.asarray(rows["shard"], np.int64)[df["shard"].to_numpy()] if len(df) else df["shard"]
    return df.astype({"bytes": "int64", "width": "int32", "height": "int32", "shard": "int64", "offset": "int64"})


def scan_manifest_tars(manifest: str | os.PathLike, names: set[str] | None = None,
                       root: str | os.PathLike | None = None):
    """The samples (scan_tar_rows) of a tar source's manifest: of every tar, or of the tars whose file name is in
    `names` (a store's image_path starts with it: what the report draws); `root` defaults to the recorded one."""
    import pandas as pd

    from visfeat.sources.manifest import manifest_root

    rows = pd.read_parquet(manifest)
    if names is not None:
        rows = rows[[os.path.basename(t) in names for t in rows["tar"]]]
    return scan_tar_rows(rows, root or manifest_root(manifest) or Path(manifest).parent)


def _failed_urls(tar: str, parquet: str | os.PathLike, k: int) -> list[tuple]:
    """Rows (scan_webdataset's columns, shard k) for the URLs img2dataset could not store in `tar`: its parquet
    has a status and error message for every URL (404, timeout, not an image)."""
    import json

    import pandas as pd

    name, part = os.path.basename(tar), pd.read_parquet(parquet)
    out = []
    for r in part[part["status"] != "success"].to_dict("records"):
        meta = {c: (None if isinstance(v, float) and v != v else v) for c, v in r.items()}  # NaN -> null
        out.append((r["key"], f"{name}/{r['key']}", -1, -1, -1, k, os.path.abspath(tar), -1,
                    f"img2dataset {r['status']}: {r['error_message']}",
                    "" if meta.get("caption") is None else str(meta["caption"]), json.dumps(meta, default=str)))
    return out


def img2dataset_parquet(tar: str) -> str:
    """The parquet img2dataset writes beside each tar: every URL of the tar with its status."""
    return tar[:-len(".tar")] + ".parquet"


def img2dataset_tars(record: str | os.PathLike) -> list[str]:
    """The finished tars of a `urls` source, in order, from the record urls.download writes beside them."""
    import pandas as pd

    folder = Path(record).parent
    return [str(folder / t) for t in pd.read_csv(record, sep="\t", dtype={"tar": str})["tar"]]


def scan_img2dataset(record: str | os.PathLike, shards: int = 1, apply_exif: bool = True):
    """The samples of a `urls` source downloaded by img2dataset (urls.download, which writes `record`, the finished
    tars in order, beside them), all at once (a shard job reads its own: scan_tar_rows): the tars read as a webdataset source (scan_webdataset), plus one row per URL that
    img2dataset could not store (404, timeout, not an image: its NNNNN.parquet has a status and error message for
    every URL), whose `error` extraction records as the failure. The tars are spread over `shards` extraction shards
    in contiguous blocks (the tar count is unknown when the workflow is planned)."""
    folder, tars = Path(record).parent, img2dataset_tars(record)
    rows = tar_rows(tars, str(folder), [k * shards // max(1, len(tars)) for k in range(len(tars))],
                    [img2dataset_parquet(t) for t in tars])
    return scan_tar_rows(rows, folder, apply_exif, headers=True)
