"""grid-feats-vqa grids: parity with the original on tiny random weights, ragged storage, pooling, k-means."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visfeat
from visfeat.engine.items import folder_items
from visfeat.engine.run import run_extraction

FIX = Path(__file__).parent / "fixtures" / "gridfeats"
WEIGHTS = FIX / "tiny_x152.pth"
PHOTOS = ("astronaut.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "coffee.png")
needs_fixture = pytest.mark.skipif(not WEIGHTS.exists(), reason="parity fixture not generated")


def photo(name: str) -> Image.Image:
    import skimage

    return Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")


def cosine_per_cell(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def reference():
    with np.load(FIX / "reference.npz") as z:
        return {k: z[k] for k in z.files}


@needs_fixture
@pytest.mark.parametrize("preset,key", [("gridfeats-x152", "x152"), ("gridfeats-x101", "x101")])
def test_parity_with_grid_feats_vqa(reference, preset, key):
    if f"chelsea/{key}" not in reference:
        pytest.skip(f"no {key} reference in the fixture")
    ex = visfeat.load_extractor(preset, weights=str(WEIGHTS), device="cpu")
    outs = ex.forward(ex.collate([ex.preprocess(photo(n)) for n in PHOTOS]))  # mixed sizes in one batch
    for name, out in zip(PHOTOS, outs):
        ref = reference[f"{Path(name).stem}/{key}"]  # (H, W, C)
        assert tuple(out["grid_hw"]) == ref.shape[:2], name
        cos = cosine_per_cell(out["grid"].reshape(ref.shape), ref)
        assert cos.min() >= 0.999, f"{preset} {name}: min cell cosine {cos.min():.5f}"
        np.testing.assert_allclose(out["grid"].reshape(ref.shape), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@pytest.fixture(scope="module")
def tiny_r50(tmp_path_factory) -> Path:
    """A random R-50 grid detector backbone in the detectron2 checkpoint layout (plus a head key, ignored)."""
    from visfeat.detection.resnet import ResNet, ResNetSpec

    torch.manual_seed(0)
    m = ResNet(ResNetSpec(depth=50, stem_out=16, res2_out=32, width_per_group=8), last=5)
    state = {f"backbone.{k}": v for k, v in m.state_dict().items()}
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 4)
    path = tmp_path_factory.mktemp("grid") / "R-50.pth"
    torch.save({"model": state, "iteration": 0}, path)
    return path


def test_ragged_grid_store_and_kmeans_codes(tiny_r50, sample_dir, tmp_path):
    from visfeat.analysis.kmeans import assign, train

    ex = visfeat.load_extractor("gridfeats-r50", weights=str(tiny_r50), device="cpu")
    items = folder_items(sample_dir)[:4]
    run_extraction(ex, items, tmp_path / "g.h5", batch_size=3, workers=1)
    where = {it.image_id: it.abspath for it in items}
    s = visfeat.open(tmp_path / "g.h5")
    for image_id in s:
        r = s[image_id]
        h, w = r["grid_hw"]
        ih, iw = r["image_hw"]
        from visfeat.detection.preprocess import resized_hw

        nh, nw = resized_hw(int(ih), int(iw), 600, 1000)
        assert (h, w) == (-(-nh // 32), -(-nw // 32)) and r["grid"].shape == (h, w, 256)  # rows shaped by grid_hw
        # equal to the backbone run on this image alone
        (alone,) = ex.forward(ex.collate([ex.preprocess(Image.open(where[image_id]).convert("RGB"))]))
        np.testing.assert_allclose(r["grid"].reshape(-1, 256), alone["grid"], rtol=1e-5, atol=1e-5)
    train([str(tmp_path / "g.h5")], str(tmp_path / "c.h5"), field="grid", k=8, niter=5, seed=0, gpu="no")
    assign(str(tmp_path / "g.h5"), str(tmp_path / "c.h5"), str(tmp_path / "codes.h5"), gpu="no")
    codes = visfeat.open(tmp_path / "codes.h5")
    from visfeat.analysis.report import kmeans_report

    figs = kmeans_report(str(tmp_path / "c.h5"), str(tmp_path / "codes.h5"), str(tmp_path / "rep"), root=str(sample_dir))
    assert all(Image.open(f).width >= 400 for f in figs)
    for image_id in s:
        assert codes[image_id]["codes"].shape == tuple(s[image_id]["grid_hw"])  # shaped like the grid


def test_pool_option_gives_a_fixed_grid(tiny_r50):
    ex = visfeat.load_extractor("gridfeats-r50", weights=str(tiny_r50), device="cpu")
    pooled = visfeat.load_extractor("gridfeats-r50", weights=str(tiny_r50), device="cpu", pool=[8, 8])
    img = photo("chelsea.png")
    (full,) = ex.forward(ex.collate([ex.preprocess(img)]))
    (p,) = pooled.forward(pooled.collate([pooled.preprocess(img)]))
    h, w = full["grid_hw"]
    want = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(full["grid"].reshape(h, w, -1)).permute(2, 0, 1)[None], (8, 8))[0].permute(1, 2, 0)
    assert p["grid"].shape == (8, 8, 256)
    np.testing.assert_allclose(p["grid"], want.numpy(), rtol=1e-5, atol=1e-6)


def test_a_checkpoint_without_backbone_is_refused(tmp_path):
    torch.save({"model": {"roi_heads.x": torch.zeros(1)}}, tmp_path / "x.pth")
    with pytest.raises(KeyError, match="no backbone"):
        visfeat.load_extractor("gridfeats-x152", weights=str(tmp_path / "x.pth"), device="cpu")


def test_gridfeats_builds_without_importing_torchvision(tmp_path):
    """Start-up is part of the speed (bench/README.md "originals.py"): torchvision costs 1.5-2.7 s to import on
    a small CPU, and the grid backbone needs none of it."""
    code = ("import sys, visfeat; ex = visfeat.load_extractor('gridfeats-x152', weights=sys.argv[1], device='cpu'); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(FIX / "tiny_x152.pth")], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
