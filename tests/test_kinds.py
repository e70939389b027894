"""Dataset source kinds (src/visfeat/sources/kinds.py): every kind's keys reach the schemas and config/README.md,
every kind builds its manifest through its class from the arguments the workflow gives it, and the registry file
is validated with one-line errors."""
from __future__ import annotations

import json
import re
import shlex

import pandas as pd
import pytest
import yaml
from conftest import REPO
from helpers.webdataset import write_tar
from PIL import Image
from test_tars import img2dataset_sample

from visfeat.cli import main
from visfeat.sources.kinds import BUILTIN_KINDS, MANIFEST_SOURCES, REGISTRY_KINDS, SOURCE_KINDS, registry_kind
from visfeat.sources.sample import SAMPLE_PHOTOS
from visfeat.workflow.args import WorkflowArgs
from visfeat.workflow.config import ConfigError, load_registry, load_registry_schema, load_schema, validate_config

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")
REGISTRY_SCHEMA = str(REPO / "workflow/schemas/datasets.schema.yaml")
README = (REPO / "config/README.md").read_text()
DATASETS_DOC = README[README.index("## `datasets`"):README.index("## `extractors`")]


def _forms(prop: dict) -> list[dict]:
    body = {k: v for k, v in prop.items() if k != "description"}
    return body.get("anyOf", [body])


@pytest.mark.parametrize("kind", SOURCE_KINDS.values(), ids=list(SOURCE_KINDS))
def test_every_key_of_a_kind_is_in_its_schema_and_the_readme(kind):
    config_props = load_schema(SCHEMA)["properties"]["datasets"]["additionalProperties"]["properties"]
    registry_schema = load_registry_schema(REGISTRY_SCHEMA)
    registry_props = registry_schema["properties"]["datasets"]["additionalProperties"]["properties"]
    for keys, props in ((kind.keys, config_props), (kind.registry_keys, registry_props)):
        for key in keys:
            assert key.name in props, key.name
            assert all(form in _forms(props[key.name]) for form in _forms(key.schema)), key.name
            assert re.search(rf"\b{kind.name}\b.*: {re.escape(key.text)}", props[key.name]["description"]), key.name
            assert f"`{key.name}`" in DATASETS_DOC, f"config/README.md does not explain {key.name}"
    assert f"`{kind.name}`" in DATASETS_DOC


def test_a_kind_checks_its_own_form_of_a_shared_key(tmp_path):
    """`path` is a string or a list in the schema (webdataset takes a list); a folder's must be a string."""
    cfg = {"datasets": {"d": {"source": "folder", "path": [str(tmp_path)]}}, "extractors": {"effnet-lite0": {}},
           "features": []}
    with pytest.raises(ConfigError, match=r"^config: datasets\.d\.path: \[.*\] is not of type 'string'$"):
        validate_config(cfg, SCHEMA)
    cfg["datasets"]["d"]["source"] = "webdataset"
    assert validate_config(cfg, SCHEMA)["datasets"]["d"]["path"] == [str(tmp_path)]


@pytest.mark.parametrize("kind", [k for k in BUILTIN_KINDS.values() if any(key.required for key in k.keys)],
                         ids=lambda k: k.name)
def test_a_required_key_missing_is_named(kind):
    cfg = {"datasets": {"d": {"source": kind.name}}, "extractors": {"effnet-lite0": {}}, "features": []}
    first = next(k for k in kind.keys if k.required)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, SCHEMA)
    assert str(e.value) == f"config: datasets.d.{first.name}: required for source {kind.name}"


# a tiny dataset of each kind, laid out as the workflow's rules leave it before the manifest job


def _png(path, seed: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12 + seed, 8), (seed * 40 % 255, 0, 0)).save(path)


def _folder(root, names):
    for k, n in enumerate(names):
        _png(root / n, k)


def _urls_download(folder):
    """What `visfeat download-urls` leaves: img2dataset's tar + parquet per tar (one URL failed), the record."""
    write_tar(folder / "00000.tar", {"000000000": img2dataset_sample(0, "a cat"),
                                     "000000001": img2dataset_sample(1, "two cups")})
    pd.DataFrame([{"key": "000000000", "status": "success", "error_message": None, "url": "u0", "caption": "a cat"},
                  {"key": "000000001", "status": "success", "error_message": None, "url": "u1", "caption": "two cups"},
                  {"key": "000000002", "status": "failed_to_download", "error_message": "HTTP Error 404: Not Found",
                   "url": "u2", "caption": "gone"}]).to_parquet(folder / "00000.parquet")
    (folder / "downloaded.tsv").write_text("tar\tcount\tsuccesses\tfailed_to_download\tfailed_to_resize\n"
                                           "00000.tar\t3\t2\t1\t0\n")


def _coco(archives):
    ann = {"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "width": 12, "height": 8} for i in (42, 7)],
           "annotations": [], "info": {}, "licenses": []}
    (archives / "ann/annotations").mkdir(parents=True)
    (archives / "ann/annotations/captions_val2014.json").write_text(json.dumps(ann))
    _folder(archives / "val/val2014", ["COCO_val2014_000000000042.jpg"])  # 7 is listed, not there


def _karpathy(archives):
    images = [{"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "cocoid": 42, "split": "test"},
              {"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "cocoid": 9, "split": "restval"},
              {"filepath": "val2014", "filename": "COCO_val2014_000000000007.jpg", "cocoid": 7, "split": "val"}]
    (archives / "splits").mkdir(parents=True)
    (archives / "splits/dataset_coco.json").write_text(json.dumps({"images": images}))
    _folder(archives / "val/val2014", ["COCO_val2014_000000000042.jpg", "COCO_val2014_000000000007.jpg"])
    _folder(archives / "train/train2014", ["COCO_train2014_000000000009.jpg"])


def _list(wd):
    _folder(wd / "photos", ["a.png", "b.png"])
    (wd / "mine.txt").write_text("cat-1\ta.png\nb.png\n")


def _tars(wd):
    (wd / "tars").mkdir()
    write_tar(wd / "tars/00000.tar", {"k0": img2dataset_sample(0, "a cat")})
    write_tar(wd / "tars/00001.tar", {"k1": img2dataset_sample(1, "a cup")})


def _urls(wd):
    (wd / "urls.csv").write_text("url,caption\nu0,a cat\n")
    (wd / "resources/datasets/d").mkdir(parents=True)
    _urls_download(wd / "resources/datasets/d")


def _vg(wd):
    _folder(wd / "resources/archives/vg1/VG_100K", ["1.png"])
    _folder(wd / "resources/archives/vg2/VG_100K_2", ["2.png"])


ARCHIVES = {name: {"url": f"https://example.com/{name}.zip"} for name in ("ann", "val", "train", "splits", "vg1",
                                                                          "vg2")}
KARPATHY = {"archives": ["train", "val", "splits"], "karpathy": "splits/dataset_coco.json", "id_style": "coco",
            "splits": ["train", "restval", "test"],
            "filepaths": {"train2014": "train/train2014", "val2014": "val/val2014"}}
# kind -> (config entry, registry entry or None, what lays out its files (workflow dir), the manifest's image ids)
CASES = {
    "sample": ({}, None, None, sorted(name.rsplit(".", 1)[0] for name in SAMPLE_PHOTOS)),
    "folder": ({"path": "photos"}, None, lambda wd: _folder(wd / "photos", ["a.png", "sub/b.png"]), ["a", "sub/b"]),
    "list": ({"list": "mine.txt", "path": "photos"}, None, _list, ["b", "cat-1"]),
    "archive": ({"url": "https://example.com/p.zip", "sha256": "0" * 64}, None,
                lambda wd: _folder(wd / "resources/datasets/d/photos", ["x.png"]), ["photos/x"]),
    "webdataset": ({"path": "tars/{00000..00001}.tar", "tars_per_shard": 1}, None, _tars, ["k0", "k1"]),
    "urls": ({"urls": "urls.csv", "shards": 2}, None, _urls, ["000000000", "000000001", "000000002"]),
    "local": ({}, {"local": "signup/images", "instructions": "ask for them", "id_style": "stem"},
              lambda wd: _folder(wd / "signup/images", ["p/one.png", "two.png"]), ["one", "two"]),
    "annotation": ({}, {"archives": ["val", "ann"], "annotation": "ann/annotations/captions_val2014.json",
                        "images": "val/val2014", "id_style": "coco"},
                   lambda wd: _coco(wd / "resources/archives"), ["42", "7"]),
    "karpathy": ({}, KARPATHY, lambda wd: _karpathy(wd / "resources/archives"), ["42", "9"]),
    "folders": ({}, {"archives": ["vg1", "vg2"], "folders": ["vg1/VG_100K", "vg2/VG_100K_2"], "id_style": "stem"},
                _vg, ["1", "2"]),
}


def test_every_kind_has_a_case():
    assert set(CASES) == set(SOURCE_KINDS)


@pytest.mark.parametrize("kind", list(CASES))
def test_a_config_of_each_kind_builds_its_manifest_through_its_class(kind, tmp_path, monkeypatch, capsys):
    entry, reg_entry, lay_out, ids = CASES[kind]
    monkeypatch.chdir(tmp_path)
    registry = {"archives": ARCHIVES, "datasets": {}}
    if reg_entry is not None:  # the registry file, loaded (and so validated) as the workflow loads it
        registry["datasets"]["reg"] = reg_entry
        (tmp_path / "datasets.yaml").write_text(yaml.safe_dump(registry))
        registry = load_registry(str(tmp_path / "datasets.yaml"))
    source = "reg" if reg_entry is not None else kind
    if lay_out:
        lay_out(tmp_path)
    cfg = validate_config({"datasets": {"d": {**entry, "source": source}}, "extractors": {"effnet-lite0": {}},
                           "features": [{"datasets": ["d"], "extractors": ["effnet-lite0"]}]}, SCHEMA,
                          registry=registry)
    args = WorkflowArgs(cfg, registry)
    src = args.source("d")
    assert type(src) is SOURCE_KINDS[kind]
    if src.prepared:  # rule prepare_dataset's command
        if kind == "sample":
            assert main([*shlex.split(f"prepare {args.prepare('d')}"), "--dest", src.root]) == 0
        else:
            assert f"--source {kind} --url " in args.prepare("d")
    # what the manifest rule waits for: a sign-up folder is none of it (the job names what to do when it is missing)
    assert all((tmp_path / p).exists() for p in src.inputs()) and bool(src.inputs()) == (kind != "local")
    capsys.readouterr()
    line = f"manifest {args.manifest('d')} --out results/d/manifest.parquet"
    assert main(shlex.split(line)) == 0
    out = capsys.readouterr().out
    df = pd.read_parquet(tmp_path / "results/d/manifest.parquet")
    if src.captions:  # a tar source's manifest lists its tars; the shard jobs scan them for samples
        from visfeat.sources.tars import scan_tar_rows

        assert out.startswith(f"manifest: {len(df)} tars under {src.root} in {src.shard_count()} shards")
        df = scan_tar_rows(df, src.root)
        assert "txt" in df.columns and df["txt"].str.len().sum() > 0
    assert sorted(df["image_id"]) == ids
    if not src.captions:
        assert out.startswith(f"manifest: {len(ids)} images under {src.root} ")
    assert src.shard_count() == {"webdataset": 2, "urls": 2}.get(kind, 1)
    assert args.image_root("d") == ("results/d/manifest.parquet" if src.captions else src.root)


def test_missing_files_and_failed_urls_are_named_by_id(tmp_path, monkeypatch, capsys):
    """The manifest job's log lines, which the workflow's users read (and tests grep)."""
    monkeypatch.chdir(tmp_path)
    _coco(tmp_path)
    assert main(["manifest", "--source", "annotation", "--root", ".", "--id-style", "coco", "--annotation",
                 "ann/annotations/captions_val2014.json", "--folder", "val/val2014", "--out", "m.parquet"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "manifest: 2 images under . (1 missing) in 1 shards -> m.parquet",
        "missing image files (1), by id: 7"]
    _urls_download(tmp_path)
    assert main(["manifest", "--source", "urls", "--root", ".", "--downloaded", "downloaded.tsv", "--shards", "2",
                 "--out", "u.parquet"]) == 0
    assert capsys.readouterr().out.splitlines() == ["manifest: 1 tars under . in 2 shards -> u.parquet"]
    from visfeat.engine.items import manifest_items  # the failed URL: a shard job's item that fails, by id

    items = [it for i in range(2) for it in manifest_items("u.parquet", 2, i, ".")]
    assert [it.image_id for it in items if it.error] == ["000000002"]


def test_a_missing_signup_folder_prints_its_instructions(tmp_path, capsys):
    assert main(["manifest", "--source", "folder", "--root", str(tmp_path / "none"), "--missing-message",
                 "Fill in the form.", "--out", str(tmp_path / "m.parquet")]) == 2
    assert capsys.readouterr().err == (f"visfeat manifest: error: image folder {tmp_path / 'none'} does not exist.\n"
                                       "Fill in the form.\n")


def test_a_folder_without_images_fails_and_a_source_listing_none_warns(tmp_path, capsys):
    """A folder source with no image file stops at the manifest in one line; a list (annotation, tars) naming no
    image is a manifest of 0 rows that says so, and extraction writes empty stores."""
    (tmp_path / "photos").mkdir()
    assert main(["manifest", "--source", "folder", "--root", str(tmp_path / "photos"), "--out",
                 str(tmp_path / "m.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visfeat manifest: error: image folder {tmp_path / 'photos'} holds no images (looked for "
                          ".jpg, .jpeg,") and err.count("\n") == 1
    assert not (tmp_path / "m.parquet").exists()
    (tmp_path / "mine.txt").write_text("# to do\n")
    assert main(["manifest", "--source", "list", "--root", str(tmp_path / "photos"), "--list",
                 str(tmp_path / "mine.txt"), "--out", str(tmp_path / "m.parquet")]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "warning: no images to extract (0 listed): this dataset's feature stores will hold 0 images"]
    assert len(pd.read_parquet(tmp_path / "m.parquet")) == 0


def test_the_manifest_command_builds_every_kind():
    """`visfeat manifest --source` takes each kind's builder (a registry kind may build as another kind), and
    refuses anything else naming the kinds."""
    assert set(MANIFEST_SOURCES) == {k.manifest_source or k.name for k in SOURCE_KINDS.values()}
    with pytest.raises(SystemExit) as e:
        main(["manifest", "--source", "nope", "--root", ".", "--out", "m.parquet"])
    assert str(e.value) == f"visfeat manifest: --source 'nope' is not a source kind; kinds: {', '.join(MANIFEST_SOURCES)}"


# the registry file


def test_the_shipped_registry_validates_and_uses_every_registry_kind():
    reg = load_registry(str(REPO / "config/datasets.yaml"))
    assert {registry_kind(d).name for d in reg["datasets"].values()} == set(REGISTRY_KINDS)


GOOD = {"archives": {"a": {"url": "https://example.com/a.zip", "size": 10}},
        "datasets": {"x": {"archives": ["a"], "folders": ["a/images"], "id_style": "stem"},
                     "s": {"local": "here", "instructions": "ask"}},
        "published": {"p": {"dataset": "x", "preset": "grid8-x152", "url": "https://example.com/p.h5",
                            "format": "xlxmert-grid8"}}}


@pytest.mark.parametrize("change, message", [
    (lambda r: r["datasets"]["x"].update(archives=["b"]), "datasets.x.archives: unknown archive 'b'"),
    (lambda r: r["datasets"]["x"].update(archives="a"), "datasets.x.archives: 'a' is not of type 'array'"),
    (lambda r: r["datasets"]["x"].update(imagez="a"), "datasets.x.imagez: unknown key"),
    (lambda r: r["datasets"]["x"].update(local="here"), "datasets.x: give exactly one of local, annotation, karpathy, "
                                                       "folders (it has local, folders)"),
    (lambda r: r["datasets"]["x"].pop("folders"), "datasets.x: give exactly one of local, annotation, karpathy, "
                                                   "folders (it has none)"),
    (lambda r: r["datasets"]["s"].pop("instructions"), "datasets.s.instructions: required for a registry dataset "
                                                       "with `local`"),
    (lambda r: r["datasets"].update(folder={"local": "x", "instructions": "y"}),
     "datasets.folder: the name of a built-in source kind"),
    (lambda r: r["archives"]["a"].update(sha256="abc"), "archives.a.sha256: 'abc' does not match"),
    (lambda r: r["archives"]["a"].pop("url"), "archives.a: 'url' is a required property"),
    (lambda r: r["published"]["p"].update(dataset="coco"),
     "published.p.dataset: 'coco' is not a dataset of the registry"),
    (lambda r: r["published"]["p"].update(format="tsv"), "published.p.format: 'tsv' is not one of"),
])
def test_a_bad_registry_entry_is_one_line_naming_the_key(tmp_path, change, message):
    reg = json.loads(json.dumps(GOOD))
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(reg))
    load_registry(str(tmp_path / "good.yaml"))
    change(reg)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(reg))
    with pytest.raises(ConfigError) as e:
        load_registry(str(tmp_path / "bad.yaml"))
    assert str(e.value).startswith(f"{tmp_path / 'bad.yaml'}: {message}") and "\n" not in str(e.value)
