"""`visfeat export --format embedding-reader` (interop/retrieval.py, interop/destinations.py): clip-retrieval's
layout, read back by the real embedding-reader and autofaiss (in .venv-retrieval: their numpy<2/pandas<3 pins
conflict with .venv's), written to a local folder and to a real S3 server (SeaweedFS, tests/helpers/s3.py), and
the workflow's `exports` target; an image store of webdataset tars with each image's caption and url."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, copy_workflow, snakemake
from helpers.webdataset import write_tar

from visfeat.cli import main
from visfeat.interop import retrieval
from visfeat.interop.retrieval import l2_normalised
from visfeat.store.format import FieldSpec
from visfeat.store.writer import writing

RETRIEVAL_PY = REPO / ".venv-retrieval/bin/python"
CLIENTS = REPO / "tests/helpers/retrieval_clients.py"


def vector_store(path, n: int = 25, dim: int = 16, seed: int = 0) -> np.ndarray:
    """A store of `n` images with a random `global` (and a grid the export leaves out); returns the globals."""
    g = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    fields = [FieldSpec("global", (dim,)), FieldSpec("grid", (2, 2, 3))]
    with writing(path, fields, {"preset": "clip-vit-b32", "config": "{}"}) as w:
        w.append([f"img{k}" for k in range(n)], [f"photos/img{k}.jpg" for k in range(n)],
                 np.full((n, 2), 32, np.int32), {"global": g, "grid": np.zeros((n, 2, 2, 3), np.float32)}, {})
    return g


def text_store(path, n: int = 9, dim: int = 8) -> np.ndarray:
    """A text store in engine/text.py's layout (`visfeat text` needs a CLIP model): caption_id, image_id, caption,
    text."""
    t = np.random.default_rng(1).normal(size=(n, dim)).astype(np.float32)
    s = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.create_dataset("caption_id", data=np.array([f"c{k}" for k in range(n)], object), dtype=s)
        f.create_dataset("image_id", data=np.array([f"img{k // 3}" for k in range(n)], object), dtype=s)
        f.create_dataset("caption", data=np.array([f"a photo number {k}" for k in range(n)], object), dtype=s)
        f.create_dataset("text", data=t)
        f.attrs["format"] = retrieval.TEXT_FORMAT
    return t


def web_dataset(root: Path, decoy: bool = False) -> tuple[Path, dict[str, tuple[str | None, str | None]]]:
    """Three img2dataset tars under root/web (4 samples each: the second without a .txt, the third without a
    .json, the fourth's json without "url") and their manifest (`visfeat manifest`); returns the manifest and each
    sample's expected (caption, url). `decoy`: the manifest also lists 00003.tar, repeating a key of 00000.tar."""
    web = root / "web"
    web.mkdir(parents=True)
    expected = {}
    for t in range(3):
        samples = {}
        for j in range(4):
            key = f"{t:05d}{j:04d}"
            caption, url = f"caption of {key}", f"http://example.com/{key}.jpg"
            meta = {"url": url, "caption": caption, "status": "success"}
            if j == 3:
                meta.pop("url")
                url = None
            members = {"jpg": b"\xff\xd8 image bytes the export never reads", "txt": caption.encode(),
                       "json": json.dumps(meta).encode()}
            if j == 1:
                del members["txt"]
                caption = None
            if j == 2:
                del members["json"]
                url = None
            samples[key] = members
            expected[key] = (caption, url)
        write_tar(web / f"{t:05d}.tar", samples)
    if decoy:
        write_tar(web / "00003.tar", {"000000000": {"jpg": b"\xff\xd8", "txt": b"not this caption"}})
    manifest = root / "manifest.parquet"
    assert main(["manifest", "--source", "webdataset", "--root", str(web), "--tars",
                 f"{web}/{{00000..0000{3 if decoy else 2}}}.tar", "--out", str(manifest)]) == 0
    return manifest, expected


def tar_store(path: Path, keys: list[str], dim: int = 8) -> np.ndarray:
    """A store of the tars' samples `keys` (in this row order), image_path "<tar>/<key>.jpg" as extraction names
    them; returns the globals."""
    g = np.random.default_rng(2).normal(size=(len(keys), dim)).astype(np.float32)
    with writing(path, [FieldSpec("global", (dim,))], {"preset": "clip-vit-b32", "config": "{}"}) as w:
        w.append(keys, [f"{k[:5]}.tar/{k}.jpg" for k in keys], np.full((len(keys), 2), 32, np.int32),
                 {"global": g}, {})
    return g


# the store's rows: not in tar order, and one sample (000010003) that extraction recorded as failed
TAR_ROWS = ["000000001", "000000000", "000000003", "000000002", "000010000", "000010002", "000010001",
            "000020003", "000020000", "000020001", "000020002"]


@pytest.fixture(scope="module")
def clients():
    if not RETRIEVAL_PY.exists():
        pytest.skip(".venv-retrieval is absent (`make setup-retrieval` creates it: autofaiss needs numpy<2)")

    def read(out, kind: str) -> dict[str, np.ndarray]:
        result = out.parent / f"{out.name}-{kind}-read.npz"
        subprocess.run([str(RETRIEVAL_PY), str(CLIENTS), str(out), kind, str(result)], check=True,
                       capture_output=True, timeout=300)
        return dict(np.load(result))

    return read


READ_META = """
import json, sys
from embedding_reader import EmbeddingReader
out, cols = sys.argv[1], sys.argv[2].split(",")
reader = EmbeddingReader(f"{out}/img_emb", file_format="parquet_npy", meta_columns=cols,
                         metadata_folder=f"{out}/metadata")
rows = []
for _, meta in reader(batch_size=3, start=0, end=reader.count, show_progress=False):
    rows += meta[cols].astype(object).where(meta[cols].notna(), None).values.tolist()
print(json.dumps(rows))
"""


@pytest.fixture(scope="module")
def meta_reader(clients):
    """The metadata columns embedding-reader gives with each vector (parquet_npy), row by row."""

    def read(out, columns: list[str]) -> list[list]:
        p = subprocess.run([str(RETRIEVAL_PY), "-c", READ_META, str(out), ",".join(columns)], check=True,
                           capture_output=True, text=True, timeout=300)
        return json.loads(p.stdout)

    return read


def test_embedding_reader_and_autofaiss_read_every_vector_with_its_id(tmp_path, clients):
    """13 parts of 2 rows: the readers' name order must be part order (img_emb_02 before img_emb_10)."""
    g = vector_store(tmp_path / "s.h5")
    assert main(["export", "--format", "embedding-reader", "--part-rows", "2", str(tmp_path / "s.h5"),
                 str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out/img_emb").iterdir())[:3] == [
        "img_emb_00.npy", "img_emb_01.npy", "img_emb_02.npy"]
    r = clients(tmp_path / "out", "img")
    assert r["count"] == 25 and list(r["rows"]) == list(range(25))
    assert list(r["ids"]) == [f"img{k}" for k in range(25)]
    assert np.array_equal(r["vectors"], l2_normalised(g).astype(np.float16).astype(np.float32))
    assert np.array_equal(r["paired"], r["vectors"])
    assert list(r["nearest"]) == list(range(25))  # autofaiss's index: each vector's nearest is itself


def test_text_store_exports_text_emb_with_its_captions(tmp_path, clients):
    t = text_store(tmp_path / "text.h5")
    assert main(["export", "--format", "embedding-reader", "--no-normalize", "--dtype", "float32", "--part-rows", "4",
                 str(tmp_path / "text.h5"), str(tmp_path / "out")]) == 0
    r = clients(tmp_path / "out", "text")
    assert list(r["ids"]) == [f"c{k}" for k in range(9)] and np.array_equal(r["vectors"], t)
    import pandas as pd

    meta = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "out/metadata").iterdir()))
    assert list(meta.columns) == ["caption", "image_id", "caption_id"]
    assert meta["caption"].iloc[4] == "a photo number 4" and meta["image_id"].iloc[4] == "img1"
    assert not (tmp_path / "out/img_emb").exists()


def test_tar_store_metadata_has_each_images_caption_and_url(tmp_path):
    """3 parts of 4 rows (part 0 from one tar, the others from two): caption and url of each row, in store order,
    null where its sample has no .txt, no .json or no "url". 00003.tar repeats a key of 00000.tar: scanned together
    they are an error, so the export passing shows that a part scans only the tars its rows name."""
    import pyarrow.parquet as pq

    manifest, expected = web_dataset(tmp_path, decoy=True)
    g = tar_store(tmp_path / "s.h5", TAR_ROWS)
    assert main(["export", "--format", "embedding-reader", "--part-rows", "4", "--manifest", str(manifest),
                 str(tmp_path / "s.h5"), str(tmp_path / "out")]) == 0
    parts = sorted((tmp_path / "out/metadata").iterdir())
    assert [p.name for p in parts] == ["metadata_0.parquet", "metadata_1.parquet", "metadata_2.parquet"]
    for i, part in enumerate(parts):
        meta = pq.read_table(part).to_pydict()  # pyarrow's own nulls (None), not pandas' NaN
        rows = TAR_ROWS[4 * i:4 * (i + 1)]
        assert list(meta) == ["image_path", "image_id", "caption", "url"]
        assert meta["image_id"] == rows and meta["image_path"] == [f"{k[:5]}.tar/{k}.jpg" for k in rows]
        assert list(zip(meta["caption"], meta["url"])) == [expected[k] for k in rows]
    assert expected["000000001"] == (None, "http://example.com/000000001.jpg")  # no .txt
    assert expected["000010002"] == ("caption of 000010002", None)  # no .json
    emb = np.concatenate([np.load(tmp_path / f"out/img_emb/img_emb_{i}.npy") for i in range(3)])
    assert np.array_equal(emb, l2_normalised(g).astype(np.float16))


def test_embedding_reader_reads_captions_and_urls_back(tmp_path, meta_reader):
    manifest, expected = web_dataset(tmp_path)
    tar_store(tmp_path / "s.h5", TAR_ROWS)
    assert main(["export", "--format", "embedding-reader", "--part-rows", "5", "--manifest", str(manifest),
                 str(tmp_path / "s.h5"), str(tmp_path / "out")]) == 0
    assert meta_reader(tmp_path / "out", ["image_id", "caption", "url"]) == [[k, *expected[k]] for k in TAR_ROWS]


def test_a_row_missing_from_its_tars_fails_with_nothing_written(tmp_path, capsys):
    """The missing image is in the last part: every part's metadata is built before the first file is written."""
    manifest, _ = web_dataset(tmp_path)
    out = tmp_path / "out"
    tar_store(tmp_path / "s.h5", [*TAR_ROWS, "000010009"])
    args = ["export", "--format", "embedding-reader", "--part-rows", "4", "--manifest", str(manifest)]
    assert main([*args, str(tmp_path / "s.h5"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visfeat export: error: embedding-reader: ") and err.count("\n") == 1
    assert "row 11 (image '000010009', 00001.tar/000010009.jpg) is not a sample of its tar 00001.tar" in err, err
    assert f"(--manifest {manifest})" in err
    assert not out.exists()
    tar_store(tmp_path / "t.h5", ["000000000", "000090000"])  # a tar the manifest does not list
    assert main([*args, str(tmp_path / "t.h5"), str(out)]) == 2
    err = capsys.readouterr().err
    assert "'000090000'" in err and "names tar '00009.tar', which --manifest" in err and not out.exists(), err


def test_manifest_of_another_kind_and_a_text_store_are_refused(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/a.jpg").write_bytes(b"\xff\xd8")
    assert main(["manifest", "--source", "folder", "--root", str(tmp_path / "photos"), "--out",
                 str(tmp_path / "folder.parquet")]) == 0
    capsys.readouterr()
    vector_store(tmp_path / "s.h5")
    text_store(tmp_path / "text.h5")
    export = ["export", "--format", "embedding-reader", "--manifest"]
    assert main([*export, str(tmp_path / "folder.parquet"), str(tmp_path / "s.h5"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--manifest {tmp_path / 'folder.parquet'} is not a tar source's manifest" in err
    manifest, _ = web_dataset(tmp_path)
    assert main([*export, str(manifest), str(tmp_path / "text.h5"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "text store, whose metadata carries its captions already" in err, err
    assert main(["export", "--format", "lxmert-h5", "--manifest", str(manifest), str(tmp_path / "s.h5"),
                 str(tmp_path / "o.h5")]) == 2
    assert "--manifest applies to embedding-reader, not lxmert-h5" in capsys.readouterr().err
    remote = tmp_path / "remote.parquet"  # tars in object storage: a job stages its own, an export none
    assert main(["manifest", "--source", "webdataset", "--root", "s3://bucket/cc", "--tars",
                 "s3://bucket/cc/{00000..00001}.tar", "--out", str(remote)]) == 0
    capsys.readouterr()
    assert main([*export, str(remote), str(tmp_path / "s.h5"), str(tmp_path / "out")]) == 2
    assert "names tars in object storage (s3://bucket/cc): stage them" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_only_tars_on_local_disk_give_the_export_their_manifest():
    """The export rule's --manifest (common.smk get_export_input): a webdataset of local tars and a urls source
    have one; tars in object storage (an export does not stage them) and file sources do not."""
    from visfeat.workflow.args import WorkflowArgs

    cfg = {"results": "results", "resources": "resources", "features": [], "datasets": {
        "local": {"source": "webdataset", "path": "/data/cc3m/{00000..00001}.tar"},
        "remote": {"source": "webdataset", "path": "s3://bucket/cc3m/{00000..00001}.tar"},
        "downloaded": {"source": "urls", "urls": "cc3m.parquet"},
        "photos": {"source": "folder", "path": "/data/photos", "shards": 1}}}
    a = WorkflowArgs(cfg, {})
    assert [a.source(d).local_tars for d in cfg["datasets"]] == [True, False, True, False]
    assert a.export_embeddings(["results/local/manifest.parquet"]) == "--manifest results/local/manifest.parquet"
    assert a.export_embeddings([]) == ""


def test_parts_stream_in_chunks_and_match_numpys_own_files(tmp_path, monkeypatch):
    """A part written chunk by chunk (3 rows at a time here) has the bytes np.save gives the whole array."""
    g = vector_store(tmp_path / "s.h5", n=10)
    monkeypatch.setattr(retrieval, "CHUNK_BYTES", 3 * 16 * 4)
    retrieval.export_embedding_reader(str(tmp_path / "s.h5"), str(tmp_path / "out"), part_rows=7, dtype="float32",
                                      normalize=False)
    for i, rows in enumerate((g[:7], g[7:])):
        np.save(tmp_path / "whole.npy", rows)
        assert (tmp_path / f"out/img_emb/img_emb_{i}.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_a_new_export_replaces_every_part_of_the_previous_one(tmp_path):
    vector_store(tmp_path / "s.h5")
    for rows in ("2", "30"):
        assert main(["export", "--format", "embedding-reader", "--part-rows", rows, str(tmp_path / "s.h5"),
                     str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == [
        "img_emb", "img_emb_0.npy", "metadata", "metadata_0.parquet"]


def test_a_failed_part_leaves_no_file_that_looks_complete(tmp_path, capsys):
    """Part 1 cannot take its name (a folder is there): parts are renamed into place only when whole, and the
    temporary file is gone."""
    vector_store(tmp_path / "s.h5")
    (tmp_path / "out/img_emb/img_emb_1.npy").mkdir(parents=True)
    assert main(["export", "--format", "embedding-reader", "--part-rows", "10", str(tmp_path / "s.h5"),
                 str(tmp_path / "out")]) == 2
    assert "img_emb_1.npy" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "img_emb_0.npy", "metadata_0.parquet"]


def test_a_store_without_a_vector_per_image_is_refused(tmp_path, capsys):
    vector_store(tmp_path / "s.h5")
    assert main(["export", "--format", "embedding-reader", "--field", "grid", str(tmp_path / "s.h5"),
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visfeat export: error: embedding-reader: ") and err.count("\n") == 1
    assert "'grid'" in err and "holds global, grid" in err and not (tmp_path / "out").exists()
    assert main(["export", "--format", "lxmert-h5", "--part-rows", "3", str(tmp_path / "s.h5"),
                 str(tmp_path / "o.h5")]) == 2
    assert "--part-rows applies to embedding-reader, not lxmert-h5" in capsys.readouterr().err


def test_s3_export_equals_the_local_one(tmp_path, s3_server, monkeypatch):
    """Parts above the multipart size (8 MiB) go up as multipart uploads; the bucket holds the local export's bytes."""
    from helpers.s3 import list_keys, make_bucket

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    make_bucket(s3_server, "exports")
    vector_store(tmp_path / "s.h5", n=6000, dim=1024)
    args = ["export", "--format", "embedding-reader", "--dtype", "float32", "--part-rows", "3000", str(tmp_path / "s.h5")]
    assert main([*args, str(tmp_path / "out")]) == 0
    assert main([*args, "s3://exports/run1/"]) == 0
    keys = list_keys(s3_server, "exports", "run1/")
    local = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert keys == [f"run1/{p}" for p in local]
    c = s3_server.client()
    for p in local:
        assert c.get_object(Bucket="exports", Key=f"run1/{p}")["Body"].read() == (tmp_path / "out" / p).read_bytes()
    assert c.list_multipart_uploads(Bucket="exports").get("Uploads", []) == []


def test_s3_missing_bucket_is_one_line_naming_the_endpoint_before_any_write(tmp_path, s3_server, monkeypatch, capsys):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    vector_store(tmp_path / "s.h5")
    assert main(["export", "--format", "embedding-reader", str(tmp_path / "s.h5"), "s3://no-such-bucket/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and s3_server.endpoint in err and "s3://no-such-bucket/" in err, err


@pytest.mark.workflow
def test_exports_target_exports_every_global_field(tmp_path):
    """`snakemake exports` on the default config plus a webdataset dataset `cc` exports the sample's and cc's
    effnet-lite0 stores (stores of their own here, so the test runs the export rules and cc's manifest alone:
    `--allowed-rules`); cc's export is given its manifest, so its metadata has each image's caption and url."""
    import pyarrow.parquet as pq
    import yaml

    (tmp_path / "wd").mkdir()
    wd = copy_workflow(tmp_path / "wd")
    _, expected = web_dataset(tmp_path)
    cfg = yaml.safe_load((wd / "config/config.yaml").read_text())
    cfg["datasets"]["cc"] = {"source": "webdataset", "path": str(tmp_path / "web/{00000..00002}.tar")}
    cfg["features"].append({"datasets": ["cc"], "extractors": ["effnet-lite0"]})
    (wd / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    g = vector_store(wd / "results/sample/effnet-lite0.h5", n=8)
    tar_store(wd / "results/cc/effnet-lite0.h5", TAR_ROWS)
    p = snakemake(wd, "exports", "--allowed-rules", "export_embeddings", "exports", "manifest", "-p")
    out = wd / "results/exports/sample/effnet-lite0"
    emb = np.load(out / "img_emb/img_emb_0.npy")
    assert emb.dtype == np.float16 and np.array_equal(emb, l2_normalised(g).astype(np.float16))
    meta = pq.read_table(out / "metadata/metadata_0.parquet").to_pydict()
    assert list(meta) == ["image_path", "image_id"] and meta["image_id"] == [f"img{k}" for k in range(8)]
    meta = pq.read_table(wd / "results/exports/cc/effnet-lite0/metadata/metadata_0.parquet").to_pydict()
    assert meta["image_id"] == TAR_ROWS and list(zip(meta["caption"], meta["url"])) == [expected[k] for k in TAR_ROWS]
    assert "--manifest results/cc/manifest.parquet" in p.stdout + p.stderr  # the printed command can be rerun
