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
