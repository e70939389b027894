"""Splits defined by annotation files rather than folders: COCO annotation json (read with pycocotools) and
Karpathy's dataset_coco.json. Each returns [(image_id, path relative to the dataset root)], sorted."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from visfeat.sources.folder import DatasetError, id_for


def pairs_from_coco_annotation(annotation: str | os.PathLike, images_dir: str, style: str = "coco"
                               ) -> list[tuple[str, str]]:
    """The split = the images of a COCO annotation file (read with pycocotools). `coco` ids are the annotation's
    numeric image ids; other styles derive the id from the file name."""
    from pycocotools.coco import COCO

    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # pycocotools prints progress to stdout
        coco = COCO(str(annotation))
    pairs = []
    for img_id, img in sorted(coco.imgs.items()):
        rel = f"{images_dir}/{img['file_name']}"
        pairs.append((str(img_id) if style == "coco" else id_for(rel, style), rel))
    ids = [i for i, _ in pairs]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{annotation}: repeated image ids under id_style {style}")
    return sorted(pairs)


def pairs_from_karpathy(split_file: str | os.PathLike, splits: list[str], folders: dict[str, str]
                        ) -> list[tuple[str, str]]:
    """Karpathy's dataset_coco.json: the images whose `split` is in `splits` (restval counts as train when asked
    for); id = cocoid; `folders` maps the file's `filepath` (train2014, val2014) to a folder under the root."""
    data = json.loads(Path(split_file).read_text(encoding="utf-8"))
    pairs = []
    for img in data["images"]:
        if img["split"] in splits:
            pairs.append((str(img["cocoid"]), f"{folders[img['filepath']]}/{img['filename']}"))
    return sorted(pairs)
