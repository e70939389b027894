"""sources/folder.py: scanning a folder (recursive, any letter case), image ids and their collisions, list files."""
import pytest

from visfeat.sources.folder import DatasetError, assign_ids, read_image_list, scan_folder


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


def test_a_folder_without_images_is_one_line_naming_it_and_the_suffixes(tmp_path):
    """An empty folder is a mistake (a wrong path, an unpacked archive elsewhere), not an empty dataset."""
    from visfeat.sources.images import IMAGE_EXTENSIONS

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/notes.txt").write_text("x")
    with pytest.raises(DatasetError) as e:
        scan_folder(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"image folder {tmp_path} holds no images") and "\n" not in msg
    assert all(ext in msg for ext in IMAGE_EXTENSIONS) and "1 other file" in msg


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
