"""webdataset sources: tar shards laid out as img2dataset writes them, read in place (issue 17)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.webdataset import write_tar
from PIL import Image

from visfeat.engine.items import manifest_items
from visfeat.sources.folder import DatasetError
from visfeat.sources.images import ImageError, load_image, load_tar_member
from visfeat.sources.manifest import shard_of
from visfeat.sources.tars import expand_braces, scan_webdataset, tar_paths


def _odd_tars(d: Path) -> dict[str, Path]:
    """Tars as tarfile, GNU tar and webdataset write them, and broken ones: name -> path."""
    import tarfile as tf

    def write(name, members, fmt=tf.PAX_FORMAT):
        with tf.open(d / name, "w", format=fmt) as t:
            for m, data in members:
                info = tf.TarInfo(m)
                if data is None:
                    info.type = tf.DIRTYPE
                else:
                    info.size = len(data)
                t.addfile(info, io.BytesIO(data) if data is not None else None)
        return d / name

    plain = [("000.jpg", b"x" * 700), ("000.txt", b"a caption"), ("001.jpg", b""), ("001.json", b"{}" * 300)]
    out = {"pax": write("pax.tar", plain), "gnu": write("gnu.tar", plain, tf.GNU_FORMAT),
           "ustar": write("ustar.tar", plain, tf.USTAR_FORMAT),
           "dirs": write("dirs.tar", [("a", None), ("a/000.jpg", b"y" * 513), ("a/b", None), ("a/b/1.txt", b"t")]),
           "long pax": write("longpax.tar", [("d" * 120 + ".jpg", b"z" * 10), *plain]),
           "long gnu": write("longgnu.tar", [("e" * 120 + ".jpg", b"z" * 10), *plain], tf.GNU_FORMAT),
           "long ustar": write("longustar.tar", [("f" * 80 + "/" + "g" * 60 + ".jpg", b"z")], tf.USTAR_FORMAT),
           "utf-8 pax": write("utf8pax.tar", [("été.jpg", b"e"), *plain]),
           "utf-8 gnu": write("utf8gnu.tar", [("été.jpg", b"e"), *plain], tf.GNU_FORMAT)}
    whole = out["pax"].read_bytes()
    for name, data in {"cut in data": whole[:1200], "cut in header": whole[:1024 + 100],
                       "no end blocks": whole[:whole.rindex(b"{}") + 2 + (-(whole.rindex(b"{}") + 2) % 512)],
                       "empty": b"", "only zeros": bytes(10240), "garbage tail": whole + b"junk" * 300,
                       "bad checksum": whole[:148] + b"0000000\0" + whole[156:]}.items():
        (d / f"{name}.tar").write_bytes(data)
        out[name] = d / f"{name}.tar"
    return out


def test_header_reader_equals_tarfile(tmp_path):
    """The fast header reader (sources/tars.py `_plain_members`) gives exactly tarfile's members, offsets and end
    verdict, or hands the tar to tarfile: checked on tars of every format tarfile and GNU tar write, and cut ones."""
    from visfeat.sources.tars import _plain_members, _tar_members, _tarfile_members

    def rows(members):
        return [(m.name, m.offset_data, m.size) for m in members]

    fast = set()
    for name, tar in _odd_tars(tmp_path).items():
        got, want = _tar_members(str(tar)), _tarfile_members(str(tar))
        assert (rows(got[0]), got[1]) == (rows(want[0]), want[1]), name
        if _plain_members(str(tar)) is not None:
            fast.add(name)
    assert fast == {"pax", "gnu", "ustar", "dirs", "utf-8 gnu"}  # what img2dataset/webdataset write reads fast


def jpeg(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def img2dataset_sample(seed: int, caption: str) -> dict[str, bytes]:
    meta = {"url": f"http://example.com/{seed}.jpg", "caption": caption, "width": 40, "height": 30, "status": "success"}
    return {"jpg": jpeg(seed), "txt": caption.encode(), "json": json.dumps(meta).encode()}


def test_brace_patterns_lists_and_folders(tmp_path):
    assert expand_braces("/d/{00000..00002}.tar") == ["/d/00000.tar", "/d/00001.tar", "/d/00002.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
    assert expand_braces("{8..10}.tar") == ["8.tar", "9.tar", "10.tar"]
    for name in ("00001.tar", "00000.tar", "00000.parquet", "00000_stats.json"):  # img2dataset's output folder
        (tmp_path / name).write_bytes(b"")
    assert tar_paths(str(tmp_path)) == [str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")]
    assert tar_paths(["a.tar", "{b,c}.tar"]) == ["a.tar", "b.tar", "c.tar"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .tar files"):
        tar_paths(str(tmp_path / "empty"))


def test_manifest_of_tars_keys_text_and_shards(tmp_path):
    a = write_tar(tmp_path / "00000.tar", {"000000000": img2dataset_sample(0, "a cat"),
                                           "000000001": img2dataset_sample(1, "two cups")})
    b = write_tar(tmp_path / "00001.tar", {"000010000": img2dataset_sample(2, "a rocket"),
                                           "000010001": {"txt": b"no image here"}})
    df = scan_webdataset([str(a), str(b)], tars_per_shard=1)
    assert list(df["image_id"]) == ["000000000", "000000001", "000010000", "000010001"]
    assert list(df["shard"]) == [0, 0, 1, 1] and list(df["txt"]) == ["a cat", "two cups", "a rocket", "no image here"]
    assert json.loads(df["json"][0])["url"] == "http://example.com/0.jpg"
    assert (df["width"][:3] == 40).all() and (df["height"][:3] == 30).all()
    assert df["path"][2] == "00001.tar/000010000.jpg" and df["error"][3].startswith("no image member")
    assert list(scan_webdataset([str(a), str(b)], tars_per_shard=2)["shard"]) == [0, 0, 0, 0]
    # each image read in place equals the image itself
    for it in manifest_items(_parquet(df, tmp_path), 2, 1, "."):
        if it.error:
            with pytest.raises(ImageError, match="no image member"):
                raise ImageError(it.error)
            continue
        (tmp_path / "x.jpg").write_bytes(jpeg(2))
        assert np.array_equal(np.asarray(load_tar_member(it.abspath, it.offset, it.size)),
                              np.asarray(load_image(tmp_path / "x.jpg")))


def _parquet(df, tmp_path: Path) -> Path:
    df.to_parquet(tmp_path / "manifest.parquet", index=False)
    return tmp_path / "manifest.parquet"


def test_duplicate_key_names_both_tars(tmp_path):
    a = write_tar(tmp_path / "00000.tar", {"k1": img2dataset_sample(0, "x")})
    b = write_tar(tmp_path / "00001.tar", {"k1": img2dataset_sample(1, "y")})
    with pytest.raises(DatasetError, match=r"'k1' is in both .*00000.tar and .*00001.tar"):
        scan_webdataset([str(a), str(b)])


@pytest.mark.parametrize("cut", ["inside the last image", "inside a header", "at zero bytes"])
def test_truncated_tar_is_rows_that_fail_never_an_error(tmp_path, cut):
    whole = write_tar(tmp_path / "whole.tar", {"k0": img2dataset_sample(0, "a"), "k1": img2dataset_sample(1, "b")})
    data = whole.read_bytes()
    with tarfile.open(whole) as t:
        last = t.getmember("k1.jpg")
        hdr = t.getmember("k1.txt").offset
    n = {"inside the last image": last.offset_data + last.size // 2, "inside a header": hdr + 100,
         "at zero bytes": 0}[cut]
    cut_tar = tmp_path / "00000.tar"
    cut_tar.write_bytes(data[:n])
    df = scan_webdataset([str(cut_tar)])
    broken = df[df["image_id"] == "00000.tar"]
    assert len(broken) == 1 and broken["error"].iloc[0].startswith(("truncated tar", "unreadable tar"))
    items = {it.image_id: it for it in manifest_items(_parquet(df, tmp_path), 1, 0, ".")}
    if cut != "at zero bytes":
        load_tar_member(items["k0"].abspath, items["k0"].offset, items["k0"].size)  # whole members still read
    if cut == "inside the last image":
        assert "ends inside k1.jpg" in broken["error"].iloc[0]
        with pytest.raises(ImageError, match="truncated tar"):
            load_tar_member(items["k1"].abspath, items["k1"].offset, items["k1"].size)
    assert shard_of(df, 1, 0)["image_id"].tolist() == df["image_id"].tolist()


def test_text_embeds_the_manifest_captions(tmp_path, tiny_clip):
    """`text: {name: {dataset: D}}`: the samples' txt members, as img2dataset writes them, are the captions; the
    embeddings equal those of the same captions given as an image_id<TAB>caption file."""
    import h5py

    from visfeat.engine.text import embed_captions, read_captions
    from visfeat.sources.manifest import write_manifest

    write_tar(tmp_path / "00000.tar", {"k0": img2dataset_sample(0, "a cat"), "k1": {"jpg": jpeg(1)},
                                       "k2": img2dataset_sample(2, "two cups")})
    manifest = tmp_path / "manifest.parquet"
    write_manifest(scan_webdataset([str(tmp_path / "00000.tar")]), manifest)
    assert read_captions(str(manifest)) == [("k0#0", "k0", "a cat"), ("k2#0", "k2", "two cups")]  # k1: no txt
    (tmp_path / "caps.txt").write_text("k0\ta cat\nk2\ttwo cups\n")
    for src in (manifest, tmp_path / "caps.txt"):
        embed_captions("clip-vit-b32", str(src), str(tmp_path / f"{src.stem}.h5"), weights=tiny_clip["vit32"][0],
                       device="cpu")
    with h5py.File(tmp_path / "manifest.h5") as a, h5py.File(tmp_path / "caps.h5") as b:
        assert list(a["caption_id"].asstr()[:]) == list(b["caption_id"].asstr()[:]) == ["k0#0", "k2#0"]
        np.testing.assert_array_equal(a["text"][:], b["text"][:])
    write_manifest(scan_webdataset([str(tmp_path / "00000.tar")]).drop(columns=["txt"]), manifest)
    with pytest.raises(ValueError, match="no `txt` captions"):
        read_captions(str(manifest))


@pytest.mark.workflow
def test_text_of_a_dataset_plans_after_its_manifest_and_needs_captions(tmp_path):
    import yaml
    from conftest import copy_workflow, snakemake

    write_tar(tmp_path / "00000.tar", {"k0": img2dataset_sample(0, "a cat")})
    (tmp_path / "wd").mkdir()
    wd = copy_workflow(tmp_path / "wd")
    cfg = {"datasets": {"cc": {"source": "webdataset", "path": str(tmp_path / "00000.tar")},
                        "folder": {"source": "folder", "path": str(tmp_path)}},
           "extractors": {"clip-vit-b32": {}},
           "features": [{"datasets": ["cc"], "extractors": ["clip-vit-b32"]}],
           "text": {"caps": {"dataset": "cc", "extractors": ["clip-vit-b32"]}}}
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", "results/text/caps/clip-vit-b32.h5")
    out = p.stdout + p.stderr
    assert "rule manifest" in out and "rule text_embeddings" in out and "results/cc/manifest.parquet" in out
    cfg["text"]["caps"]["dataset"] = "folder"
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(wd, "-n", check=False)
    assert p.returncode != 0 and "config: text.caps.dataset: 'folder' has no captions" in p.stdout + p.stderr


def test_report_draws_images_read_in_place_from_their_tars(tmp_path):
    from visfeat.analysis.report import _image
    from visfeat.sources.manifest import write_manifest
    from visfeat.store.format import FieldSpec
    from visfeat.store.reader import FeatureStore
    from visfeat.store.writer import writing

    write_tar(tmp_path / "00000.tar", {"k0": img2dataset_sample(0, "a cat"), "k1": img2dataset_sample(1, "a dog")})
    manifest = tmp_path / "manifest.parquet"
    write_manifest(scan_webdataset([str(tmp_path / "00000.tar")]), manifest)
    with writing(tmp_path / "s.h5", [FieldSpec("global", (2,), "float32")], {"config": "{}"}) as w:
        w.append(["k1", "k0"], ["00000.tar/k1.jpg", "00000.tar/k0.jpg"], np.array([[30, 40], [30, 40]]),
                 {"global": np.zeros((2, 2), np.float32)})
    s = FeatureStore(tmp_path / "s.h5")
    img = _image(str(manifest), s, 0)
    expected = Image.open(io.BytesIO(jpeg(1))).convert("RGB")
    np.testing.assert_array_equal(np.asarray(img), np.asarray(expected))
    assert _image(str(tmp_path), s, 0) is None  # a tar member is not a file under a root


def test_a_tar_manifest_lists_tars_and_each_job_scans_its_own(tmp_path):
    """`visfeat manifest` of a webdataset opens no tar (one row per tar, relative to the tar root); each job's
    items equal those of the old manifest (every sample scanned up front, cut by shard_of), in the same order, so
    existing stores resume and reuse; the same tars staged elsewhere resolve against another --root."""
    import shutil

    from visfeat.cli import main
    from visfeat.sources.manifest import per_image_rows

    web = tmp_path / "web"
    (web / "b").mkdir(parents=True)
    tars = [write_tar(web / "00000.tar", {"k0": img2dataset_sample(0, "a"), "k1": {"txt": b"no image"}}),
            write_tar(web / "b/00001.tar", {"k2": img2dataset_sample(2, "b")}),
            write_tar(web / "b/00002.tar", {"k3": img2dataset_sample(3, "c"), "k4": img2dataset_sample(4, "d")})]
    tars[2].write_bytes(tars[2].read_bytes()[:1500])  # cut short: a row of its own
    scan_webdataset([str(t) for t in tars], 2).to_parquet(tmp_path / "old.parquet", index=False)
    new = tmp_path / "new.parquet"
    assert main(["manifest", "--source", "webdataset", "--root", str(web), "--tars-per-shard", "2",
                 "--tars", str(web / "00000.tar"), "--tars", f"{web}/b/{{00001,00002}}.tar", "--out", str(new)]) == 0
    assert not per_image_rows(new) and pd.read_parquet(new)["tar"].tolist() == ["00000.tar", "b/00001.tar",
                                                                                "b/00002.tar"]
    staged = tmp_path / "staged"
    shutil.copytree(web, staged)
    for i in range(2):
        items = manifest_items(new, 2, i, web)
        assert items == manifest_items(tmp_path / "old.parquet", 2, i, ".") and items
        moved = manifest_items(new, 2, i, staged)
        assert [(it.image_id, it.path, it.offset, it.error) for it in moved] == [
            (it.image_id, it.path, it.offset, it.error) for it in items]
        assert all(it.abspath.startswith(str(staged)) for it in moved)
    # whole-dataset readers: the captions (text embeddings) and the tars a report draws from, at the recorded root
    from visfeat.engine.text import read_captions
    from visfeat.sources.tars import scan_manifest_tars

    assert read_captions(str(new)) == read_captions(str(tmp_path / "old.parquet")) == [
        ("k0#0", "k0", "a"), ("k1#0", "k1", "no image"), ("k2#0", "k2", "b")]
    assert scan_manifest_tars(new, {"00001.tar"})["image_id"].tolist() == ["k2"]
