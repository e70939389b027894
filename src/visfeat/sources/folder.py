"""Images named by path: a folder scan, an image list file, a set of folders; image ids from paths.

Image ids are the path relative to the dataset root without extension (`id_style: path`), the file stem
(`stem`), or the trailing number of the stem (`coco`: COCO_val2014_000000000042.jpg -> "42"). A collision is an
error naming both files."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from visfeat.sources.images import IMAGE_EXTENSIONS, is_image_file


class DatasetError(ValueError):
    pass


def id_for(relpath: str, style: str) -> str:
    rel = relpath.replace(os.sep, "/")
    stem = os.path.splitext(rel)[0]
    if style == "path":
        return stem
    if style == "stem":
        return os.path.basename(stem)
    if style == "coco":
        m = re.search(r"(\d+)$", os.path.basename(stem))
        if not m:
            raise DatasetError(f"id_style coco: no trailing number in file name {rel!r}")
        return str(int(m.group(1)))
    raise DatasetError(f"unknown id_style {style!r} (path, stem, coco)")


def assign_ids(relpaths: list[str], style: str = "path") -> list[tuple[str, str]]:
    """[(image_id, relpath)] sorted by id; a collision names both files."""
    seen: dict[str, str] = {}
    for p in relpaths:
        i = id_for(p, style)
        if i in seen:
            raise DatasetError(f"image id {i!r} is shared by {seen[i]!r} and {p!r} (choose another id_style)")
        seen[i] = p
    return sorted(seen.items())


def scan_folder(root: str | os.PathLike, style: str = "path") -> list[tuple[str, str]]:
    """Every image file under `root` (recursive; extension in any letter case), as (image_id, relpath). A folder
    with no image file at all is an error: a folder given by name that holds none is a wrong path or an archive
    unpacked elsewhere, not an empty dataset."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    rel, others = [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            if is_image_file(f):
                rel.append(os.path.relpath(os.path.join(dirpath, f), root))
            else:
                others += 1
    if not rel:
        raise DatasetError(f"image folder {root} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} in any "
                           f"letter case, in every subfolder; {others} other file{'' if others == 1 else 's'})")
    return assign_ids(rel, style)


def list_lines(list_file: str | os.PathLike) -> Iterator[tuple[int, str | None, str]]:
    """The one parser of list files: (line number, image id or None, path) for each `path` or
    `image_id<TAB>path` line; blank lines and `#` comments skipped."""
    for n, line in enumerate(Path(list_file).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if "\t" in line:
            image_id, path = line.split("\t", 1)
            yield n, image_id, path
        else:
            yield n, None, line.strip()


def read_image_list(list_file: str | os.PathLike, style: str = "path") -> list[tuple[str, str]]:
    """A list file: `path` or `image_id<TAB>path` per line, paths relative to the dataset root."""
    explicit, plain = [], []
    for _, image_id, path in list_lines(list_file):
        if image_id is not None:
            explicit.append((image_id, path))
        else:
            plain.append(path)
    pairs = assign_ids(plain, style) if plain else []
    seen = {i: p for i, p in pairs}
    for i, p in explicit:
        if i in seen:
            raise DatasetError(f"image id {i!r} is shared by {seen[i]!r} and {p!r}")
        seen[i] = p
    return sorted(seen.items())


def pairs_from_folders(root: str | os.PathLike, folders: list[str], style: str = "path") -> list[tuple[str, str]]:
    """Images of several folders under one root (Visual Genome's two parts); paths relative to `root`."""
    rel = []
    for folder in folders:
        for _, p in scan_folder(Path(root) / folder, "path"):
            rel.append(f"{folder}/{p}")
    return assign_ids(rel, style)


def absent(root: str | os.PathLike, paths: list[str]) -> list[bool]:
    """Which paths (relative to `root`, or absolute) are not in their folder's listing: one listing per folder,
    not one stat per file, so a dataset-wide check costs its folders, not its images."""
    listed: dict[str, set[str]] = {}
    out = []
    for p in paths:
        folder, name = os.path.split(os.path.join(root, p))
        if folder not in listed:
            try:
                listed[folder] = set(os.listdir(folder or "."))
            except OSError:  # no such folder: every file in it is absent
                listed[folder] = set()
        out.append(name not in listed[folder])
    return out
