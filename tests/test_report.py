"""`snakemake --report` from a tiny run: every expected figure is in it, a valid image of sensible size."""
import io
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import copy_workflow, snakemake
from PIL import Image

from visfeat.analysis.report import feature_report, grid_extent
from visfeat.store.format import FieldSpec
from visfeat.store.writer import StoreWriter

FEATURE_FIGURES = {"samples.png", "norms.png", "classes.png", "failures.png", "throughput.png"}
KMEANS_FIGURES = {"objective.png", "cluster_sizes.png", "codes.png"}


@pytest.mark.workflow
def test_report_has_every_figure(tmp_path):
    wd = copy_workflow(tmp_path)
    snakemake(wd)  # default config: effnet-lite0 over the sample photos
    snakemake(wd, "kmeans")
    snakemake(wd, "--report", "report.zip", "all_features", "kmeans")
    with zipfile.ZipFile(wd / "report.zip") as z:
        pngs = {n.rsplit("/", 1)[-1]: n for n in z.namelist() if n.endswith(".png")}
        assert FEATURE_FIGURES | KMEANS_FIGURES <= set(pngs)
        assert any(n.endswith("report.html") for n in z.namelist())
        for name in FEATURE_FIGURES | KMEANS_FIGURES:
            im = Image.open(io.BytesIO(z.read(pngs[name])))
            im.verify()
            im = Image.open(io.BytesIO(z.read(pngs[name])))
            assert im.format == "PNG" and im.width >= 400 and im.height >= 150, (name, im.size)
            assert len(np.unique(np.asarray(im.convert("L")))) > 8, name  # not a blank canvas
        # the throughput figure has its bars (matplotlib's tab:purple), not the "no data" text
        bars = _purple_pixels(io.BytesIO(z.read(pngs["throughput.png"])))
        assert bars > 500, f"throughput.png has no bars ({bars} purple pixels)"

    out = tmp_path / "chelsea.png"
    subprocess.run([sys.executable, "-m", "visfeat", "show", str(wd / "results/sample/effnet-lite0.h5"), "chelsea",
                    "--root", str(wd / "resources/datasets/sample"), "--out", str(out)], check=True,
                   env={"PYTHONPATH": str(wd / "src"), "PATH": ""}, capture_output=True)
    assert Image.open(out).size[0] >= 400


def _purple_pixels(png) -> int:
    """The throughput figure's bars (matplotlib's tab:purple), not its "no data" text."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(rgb - [0x94, 0x67, 0xbd]).sum(-1) < 30).sum())


def test_throughput_figure_draws_the_measurements_it_is_given(tmp_path):
    w = StoreWriter(tmp_path / "s.h5", [FieldSpec("global", (4,))], {"preset": "t", "extractor": "t", "config": "{}"})
    w.append(["a", "b"], ["a.jpg", "b.jpg"], np.full((2, 2), 8), {"global": np.ones((2, 4), np.float32)})
    w.close()
    drawn = feature_report(str(tmp_path / "s.h5"), str(tmp_path / "a"), throughput=[("0", 8, 2.0), ("1", 6, 1.0)])
    empty = feature_report(str(tmp_path / "s.h5"), str(tmp_path / "b"))
    assert _purple_pixels(drawn[-1]) > 500 and drawn[-1].name == "throughput.png"
    assert _purple_pixels(empty[-1]) == 0


def test_grid_extent_follows_the_crop():
    assert grid_extent({"image_size": 224, "resize_size": 256}, 300, 400) == (
        pytest.approx((400 - 262.5) / 2), pytest.approx((400 + 262.5) / 2), pytest.approx(281.25), pytest.approx(18.75))
    assert grid_extent({"image_size": 448, "squash_resize": True}, 300, 400) == (0, 400, 300, 0)
    assert grid_extent({"image_size": 224}, 300, 400) == (50, 350, 300, 0)


# `visfeat show` and the classes figure of a classifier's store (effnet-lite0: global, grid, logits)

GRID_CYAN = (0x00, 0xFF, 0xFF)  # report.GRID_COLOR: the grid cells' lines
BAR_CYAN = (0x17, 0xBE, 0xCF)  # matplotlib's tab:cyan: the class bars
EGYPTIAN_CAT, TABBY, TIGER_CAT = 285, 281, 282  # ImageNet-1k class indices


def _pixels(png, rgb, tol: int = 60) -> int:
    im = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(im - rgb).sum(-1) < tol).sum())


def _classifier_store(tmp_path, top1: list[int]):
    """An effnet-lite0 store of the chelsea photo (one row per entry of `top1`, that class most probable) and
    the folder its image paths are relative to."""
    import json

    from helpers.photos import photo

    root = tmp_path / "photos"
    root.mkdir()
    img = photo("chelsea.png")
    img.save(root / "chelsea.jpg")
    n = len(top1)
    logits = np.zeros((n, 1000), np.float32)
    logits[:, TABBY], logits[:, TIGER_CAT] = 2.0, 1.0
    logits[np.arange(n), top1] = 4.0
    specs = [FieldSpec("global", (1280,)), FieldSpec("grid", (7, 7, 1280)), FieldSpec("logits", (1000,))]
    w = StoreWriter(tmp_path / "e.h5", specs, {"preset": "effnet-lite0", "extractor": "effnet-lite0",
                                               "config": json.dumps({"image_size": 224, "resize_size": 256})})
    ids = ["chelsea"] + [f"copy{k}" for k in range(1, n)]
    w.append(ids, ["chelsea.jpg"] * n, np.tile([img.height, img.width], (n, 1)),
             {"global": np.ones((n, 1280), np.float32), "grid": np.ones((n, 7, 7, 1280), np.float32),
              "logits": logits})
    w.close()
    return tmp_path / "e.h5", root


def test_show_without_the_image_says_what_to_pass(tmp_path, capsys):
    from visfeat.cli import main

    store, root = _classifier_store(tmp_path, [EGYPTIAN_CAT])
    out = tmp_path / "chelsea.png"
    assert main(["show", str(store), "chelsea", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visfeat show: error: ") and err.count("\n") == 1 and "--root" in err, err
    assert "manifest.parquet" in err and not out.exists()  # a tar source's root is its manifest
    assert main(["show", str(store), "chelsea", "--root", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "chelsea.jpg") in err and err.count("\n") == 1 and not out.exists(), err


def test_show_draws_the_grid_cells_and_the_top5_classes(tmp_path, capsys):
    from visfeat.cli import main

    store, root = _classifier_store(tmp_path, [EGYPTIAN_CAT])
    out = tmp_path / "chelsea.png"
    assert main(["show", str(store), "chelsea", "--root", str(root), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    top5 = next(line for line in lines if line.startswith("[visfeat] chelsea: top-5 classes: "))
    assert top5.split(": ", 2)[2].startswith("Egyptian cat 0.") and ", tabby 0." in top5 and ", tiger cat 0." in top5
    assert _pixels(out, GRID_CYAN) > 1000, "no grid cells drawn"
    assert _pixels(out, BAR_CYAN, 30) > 500, "no class bars drawn"


def test_classes_figure_of_a_classifier_store_counts_top1_classes(tmp_path):
    store, root = _classifier_store(tmp_path, [EGYPTIAN_CAT, EGYPTIAN_CAT, TABBY])
    paths = {p.name: p for p in feature_report(str(store), str(tmp_path / "rep"), root=str(root))}
    assert _pixels(paths["classes.png"], BAR_CYAN, 30) > 500, "no class bars (the 'no regions' text?)"
    assert _pixels(paths["samples.png"], GRID_CYAN) > 300, "no grid cells on the samples"


def test_tar_images_come_from_one_tar_and_figures_sample(tmp_path):
    """A tar source's manifest lists tars only: the report finds an image by reading its own tar's headers. Whole-store
    figures read `sample_spans` of the rows (a bounded count spread over the store), never every row."""
    import io
    import tarfile

    import h5py

    from visfeat.analysis.report import SAMPLED_ROWS, read_image, sample_spans, sampled
    from visfeat.sources.manifest import write_manifest
    from visfeat.sources.tars import tar_rows
    from visfeat.store.reader import FeatureStore

    colours = {"k0": (200, 0, 0), "k1": (0, 0, 200)}
    (tmp_path / "tars").mkdir()
    for name, key in (("a.tar", "k0"), ("b.tar", "k1")):
        buf = io.BytesIO()
        Image.new("RGB", (8, 6), colours[key]).save(buf, "PNG")
        with tarfile.open(tmp_path / "tars" / name, "w") as t:
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(buf.getvalue())
            t.addfile(info, io.BytesIO(buf.getvalue()))
    tars = [str(tmp_path / "tars/a.tar"), str(tmp_path / "tars/b.tar")]
    write_manifest(tar_rows(tars, str(tmp_path / "tars"), [0, 1]), tmp_path / "m.parquet", 2, root=tmp_path / "tars")
    w = StoreWriter(tmp_path / "s.h5", [FieldSpec("global", (2,))], {"config": "{}"})
    w.append(["k1", "k0"], ["b.tar/k1.png", "a.tar/k0.png"], np.array([[6, 8], [6, 8]]),
             {"global": np.zeros((2, 2), np.float32)})
    w.close()
    s = FeatureStore(tmp_path / "s.h5")
    assert np.asarray(read_image(str(tmp_path / "m.parquet"), s, 0))[0, 0].tolist() == list(colours["k1"])
    assert np.asarray(read_image(str(tmp_path / "m.parquet"), s, 1))[0, 0].tolist() == list(colours["k0"])

    assert sample_spans(5) == [(0, 5)] and sample_spans(0) == []
    spans = sample_spans(10 ** 8)
    assert sum(b - a for a, b in spans) <= SAMPLED_ROWS and spans[0][0] == 0 and spans[-1][1] == 10 ** 8
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f["x"] = np.arange(3 * SAMPLED_ROWS)
        got = sampled(f["x"])
    assert len(got) <= SAMPLED_ROWS and got[0] == 0 and got[-1] == 3 * SAMPLED_ROWS - 1
