import hashlib

import pandas as pd
import pytest

from visfeat.sources.folder import DatasetError, assign_ids, read_image_list, scan_folder
from visfeat.sources.manifest import build_manifest, shard_index, shard_of, write_shard
from visfeat.sources.sample import SAMPLE_PHOTOS


def _touch_images(root, names):
    from PIL import Image

    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 10)).save(p, format={"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(
            p.suffix.lower()[1:], p.suffix.lower()[1:].upper()))


def test_folder_scan_recursive_any_case(tmp_path):
    names = ["a.JPG", "b.jpeg", "sub/c.PNG", "sub/deep/d.webp", "e.bmp", "f.GIF", "g.Tif", "h.tiff"]
    _touch_images(tmp_path, names)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    pairs = scan_folder(tmp_path)
    assert [p for _, p in pairs] == sorted(names, key=lambda n: n.rsplit(".", 1)[0])
    assert dict(pairs)["sub/deep/d"] == "sub/deep/d.webp"


def test_id_collision_names_both_files(tmp_path):
    _touch_images(tmp_path, ["x/img.jpg", "y/img.png"])
    assert len(scan_folder(tmp_path)) == 2
    with pytest.raises(DatasetError, match="x/img.jpg.*y/img.png"):
        scan_folder(tmp_path, style="stem")


def test_coco_ids():
    pairs = assign_ids(["val2014/COCO_val2014_000000000042.jpg", "val2014/COCO_val2014_000000391895.jpg"], "coco")
    assert [i for i, _ in pairs] == ["391895", "42"]  # sorted as strings
    with pytest.raises(DatasetError):
        assign_ids(["nonumber.jpg"], "coco")


def test_list_file(tmp_path):
    (tmp_path / "list.txt").write_text("a/one.jpg\nmy-id\tb/two.png\n\n# comment\n")
    assert read_image_list(tmp_path / "list.txt") == [("a/one", "a/one.jpg"), ("my-id", "b/two.png")]


def test_manifest_reads_headers(sample_dir):
    df = build_manifest(sample_dir, scan_folder(sample_dir))
    assert len(df) == len(SAMPLE_PHOTOS)
    row = df.set_index("image_id").loc["chelsea"]
    assert (row.width, row.height) == (451, 300) and row.bytes > 0


def test_shards_deterministic_balanced_and_complete(tmp_path):
    n = 4000
    df = pd.DataFrame({"image_id": [f"id{i:04d}" for i in range(n)][::-1], "path": [f"p{i}" for i in range(n)]})
    lines = []
    for i in range(4):
        write_shard(df, 4, i, tmp_path / f"{i}.txt")
        lines.append((tmp_path / f"{i}.txt").read_text().splitlines())
    assert all(abs(len(x) - n / 4) < 0.1 * n / 4 for x in lines), [len(x) for x in lines]  # balanced by the hash
    ids = [line.split("\t")[0] for x in lines for line in x]
    assert sorted(ids) == sorted(df["image_id"]) and len(set(ids)) == n  # every id once
    assert all(x == sorted(x) for x in lines)  # sorted by id within a shard
    write_shard(df.sample(frac=1, random_state=1), 4, 2, tmp_path / "again.txt")
    assert (tmp_path / "again.txt").read_text().splitlines() == lines[2]  # whatever the manifest's row order
    assert sum(len(shard_of(df.head(2), 4, i)) for i in range(4)) == 2  # fewer images than shards: some empty


def test_shard_membership_is_stable_when_images_are_added_or_removed():
    """Membership by a hash of the id, not by position: adding or removing ids moves no other id (issue 17)."""
    old = [f"photos/{i:05d}" for i in range(1000)]
    new = old[:500] + old[501:] + [f"photos/{i:05d}" for i in range(1000, 1010)] + ["a-new/first"]
    before, after = dict(zip(old, shard_index(old, 7))), dict(zip(new, shard_index(new, 7)))
    assert all(after[i] == before[i] for i in new if i in before)
    # a fixed digest, not Python's salted hash(): the same shard in every process, on every machine
    assert shard_index(["chelsea", "coffee", "42"], 1000).tolist() == [
        int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") % 1000
        for k in ("chelsea", "coffee", "42")]
