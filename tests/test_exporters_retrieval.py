"""`visfeat export --format embedding-reader` (interop/retrieval.py, interop/destinations.py): clip-retrieval's
layout, read back by the real embedding-reader and autofaiss (in .venv-retrieval: their numpy<2/pandas<3 pins
conflict with .venv's), written to a local folder and to a real S3 server (SeaweedFS, tests/helpers/s3.py), and
the workflow's `exports` target."""
from __future__ import annotations

import subprocess

import h5py
import numpy as np
import pytest
from conftest import REPO, copy_workflow, snakemake

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
    """`snakemake exports` on the default config exports the sample's effnet-lite0 store (a store of its own here,
    so the test runs the export rules alone: `--allowed-rules`)."""
    wd = copy_workflow(tmp_path)
    g = vector_store(wd / "results/sample/effnet-lite0.h5", n=8)
    snakemake(wd, "exports", "--allowed-rules", "export_embeddings", "exports")
    out = wd / "results/exports/sample/effnet-lite0"
    emb = np.load(out / "img_emb/img_emb_0.npy")
    assert emb.dtype == np.float16 and np.array_equal(emb, l2_normalised(g).astype(np.float16))
    import pandas as pd

    assert pd.read_parquet(out / "metadata/metadata_0.parquet")["image_id"].tolist() == [f"img{k}" for k in range(8)]
