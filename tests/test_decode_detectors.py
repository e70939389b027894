"""`decode: gpu` for the detector presets: each preprocessor's `tensor_preprocess()` (uint8 tensor in, the PIL
path's dict out) against its PIL path on real photos, and `run_extraction` under `gpu` against `pil` on the tiny
detector fixtures, here with the device on the CPU (the same code on CPU tensors).

Bounds (docs/presets.md "Decode modes"): on the same decoded pixels the model input is the PIL path's bit for bit
(Pillow's fixed-point bilinear and OpenCV's plain float path rebuilt as tensor ops), except with `resize: opencv`,
whose cv2.resize may go through Intel IPP: within OPENCV_MAX_DIFF grey levels. On CPU tensors the JPEG decode is
libjpeg-turbo's like PIL's, so stores come out identical to `pil`; nvJPEG on a GPU decodes slightly differently.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.photos import cosine, photo
from PIL import Image
from test_decode import FAMILIES, PHOTOS, damaged_jpegs, extract, jpegs, rotated_and_png

import visfeat
from visfeat.detection.preprocess import DetectorPreprocessor, pil_bilinear
from visfeat.extractors.registry import resolve_options
from visfeat.sources.images import load_image

OPENCV_MAX_DIFF = 0.01  # grey levels: cv2.resize (IPP) against its plain path (measured <= 0.004 at 640x480)
# (w, h): COCO-like (enlarged to 600/1000 or 800/1333), large (shrunk), tall (Pillow 13 runs the vertical pass
# first: its height shrinks by more than twice as many pixels as its width), odd
SIZES = ((640, 480), (1600, 1200), (500, 1400), (333, 517))
STYLES = {  # preprocessing style: (family in FAMILIES, options over its own)
    "detectron2 (butd)": ("butd", {}),
    "detectron2 (gridfeats)": ("gridfeats", {}),
    "maskrcnn (vinvl)": ("vinvl", {}),
    "caffe_float scale (vmb)": ("vmb", {}),
    "caffe_float floor32 (grid8)": ("grid8", {}),
    "caffe_float scale, resize opencv (vmb)": ("vmb", {"resize": "opencv"}),
}


def as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def preprocessor(family: str, **extra):
    preset, weights, options = FAMILIES[family]
    if not weights.exists():
        pytest.skip("parity fixture not generated")
    return visfeat.load_extractor(preset, weights=str(weights), device="cpu", **options, **extra).preprocessor()


@pytest.fixture(scope="module")
def photos_at_sizes(tmp_path_factory) -> list[Path]:
    """The photos as quality-90 JPEGs at every size of SIZES."""
    d = tmp_path_factory.mktemp("sizes")
    return [jpegs(d / f"{w}x{h}", (w, h)) / f"{Path(n).stem}.jpg" for w, h in SIZES for n in PHOTOS]


def test_pil_bilinear_is_pillows_resize_bit_for_bit():
    """Enlarging, shrinking (the filter widens), one side only, to 1 pixel, either pass order, on noise."""
    rng = np.random.default_rng(0)
    cases = [((640, 480), (800, 600)), ((1600, 1200), (800, 600)), ((500, 1400), (357, 1000)), ((474, 440), (457, 219)),
             ((765, 573), (614, 325)), ((300, 200), (300, 97)), ((300, 200), (1000, 200)), ((97, 61), (1, 1)),
             ((1000, 30), (7, 900))]
    for (w, h), (nw, nh) in cases:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(a).resize((nw, nh), Image.BILINEAR), np.float32)
        got = pil_bilinear(torch.from_numpy(a).permute(2, 0, 1), (nh, nw)).permute(1, 2, 0).numpy()
        assert np.array_equal(ref, got), ((w, h), (nw, nh), float(np.abs(ref - got).max()))


def within(a: dict, b: dict, max_grey: float, std: np.ndarray, what: str) -> tuple[float, float]:
    """Same keys, shapes and dtypes, sizes and scales equal, image within `max_grey` grey levels (the model input
    times its std); returns (mean, max) |difference| in grey levels."""
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, (what, k, a[k].shape, b[k].shape)
        if k != "image":
            assert torch.equal(a[k], b[k]), (what, k)
    diff = (a["image"].double() - b["image"].double()).abs() * torch.as_tensor(std, dtype=torch.float64)[:, None, None]
    mean, worst = float(diff.mean()), float(diff.max())
    assert worst <= max_grey, (what, mean, worst)
    return mean, worst


@pytest.mark.parametrize("style", list(STYLES))
def test_tensor_preprocess_matches_the_pil_path(style, photos_at_sizes):
    """On the same decoded pixels: the PIL path's dict exactly (keys, shapes, dtypes, sizes, scale) and its model
    input bit for bit; `resize: opencv` within OPENCV_MAX_DIFF grey levels."""
    family, extra = STYLES[style]
    if extra.get("resize") == "opencv":
        pytest.importorskip("cv2")
    pre = preprocessor(family, **extra)
    on_tensor = pre.tensor_preprocess()
    bound = OPENCV_MAX_DIFF if extra.get("resize") == "opencv" else 0.0
    means, worst = [], 0.0
    for path in photos_at_sizes:
        img = load_image(path)
        mean, w = within(pre(img), on_tensor(as_tensor(img)), bound, np.ones(3), f"{style} {path}")
        means.append(mean)
        worst = max(worst, w)
    print(f"{style}: mean |tensor - pil| {np.mean(means):.5f}, max {worst:.4f} grey levels, "
          f"{len(photos_at_sizes)} images at {SIZES}")


def test_tensor_preprocess_normalises_by_std_as_the_pil_path():
    """gridfeats-x101 divides by its std (57.4): the same float32 operations, so the same input bit for bit."""
    o = resolve_options("gridfeats-x101")
    pre = DetectorPreprocessor(600, 1000, tuple(o["pixel_mean"]), tuple(o["pixel_std"]), o["input_format"] == "BGR")
    img = photo("chelsea.png").resize((640, 480), Image.BICUBIC)
    within(pre(img), pre.tensor_preprocess()(as_tensor(img)), 0.0, pre.std, "gridfeats-x101")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_detector_gpu_decode_end_to_end_as_pil(family, tmp_path):
    """run_extraction under `gpu` (device: the CPU) on JPEGs, a PNG and an EXIF-rotated JPEG: the same ids,
    image_hw, fields, shapes and dtypes as `pil`, and on CPU tensors the very same values."""
    preset, weights, options = FAMILIES[family]
    if not weights.exists():
        pytest.skip("parity fixture not generated")
    folder = rotated_and_png(jpegs(tmp_path / "img", (640, 480)))
    pil = extract(preset, weights, folder, tmp_path / "pil.h5", **options)
    gpu = extract(preset, weights, folder, tmp_path / "gpu.h5", decode="gpu", **options)
    assert set(pil) == set(gpu) and len(pil) == len(PHOTOS) + 2 and not pil.failed and not gpu.failed
    worst = 0.0
    for i in pil:
        a, b = pil[i], gpu[i]
        assert tuple(a["image_hw"]) == tuple(b["image_hw"]) == (480, 640), i
        assert a.keys() == b.keys(), i
        for k in a:
            assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, (i, k)
            if a[k].size:
                worst = max(worst, float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()))
            assert np.array_equal(a[k], b[k]), (family, i, k)
    print(f"{family} gpu (on CPU tensors) vs pil: every field equal (max |diff| {worst})")


@pytest.mark.parametrize("family", ["butd", "vinvl", "vmb"])
def test_forced_boxes_under_gpu_as_under_pil(family, tmp_path):
    """Forced-boxes mode on pil's own boxes: under `gpu` the boxes come back as given and the features equal
    those of `pil` on the same boxes (the model input agrees bit for bit on CPU tensors)."""
    preset, weights, options = FAMILIES[family]
    if not weights.exists():
        pytest.skip("parity fixture not generated")
    folder = jpegs(tmp_path / "img", (640, 480))
    pil = extract(preset, weights, folder, tmp_path / "pil.h5", **options)
    given = {i: pil[i]["boxes"] for i in pil}
    forced = {m: extract(preset, weights, folder, tmp_path / f"forced_{m}.h5", given=given, decode=m, **options)
              for m in ("pil", "gpu")}
    cos = []
    for i in pil:
        a, b = forced["pil"][i], forced["gpu"][i]
        np.testing.assert_allclose(b["boxes"], pil[i]["boxes"], atol=1e-3)
        assert a["features"].shape == b["features"].shape
        cos.append(float(cosine(a["features"], b["features"]).min()))
        assert np.array_equal(a["features"], b["features"]), (family, i)
    print(f"{family}: forced-boxes features gpu vs pil, least cosine {min(cos):.6f} (identical)")


def test_corrupt_jpeg_under_gpu_is_a_recorded_failure_for_detectors(tmp_path):
    """Bytes through worker processes, decoded in the main process: damaged files fail alone with PIL's reason."""
    preset, weights, options = FAMILIES["butd"]
    if not weights.exists():
        pytest.skip("parity fixture not generated")
    d = damaged_jpegs(tmp_path, (640, 480))
    (d / "notjpeg.jpg").write_bytes(b"not an image at all")
    s = extract(preset, weights, d, tmp_path / "b.h5", workers=2, decode="gpu", **options)
    failed = dict(s.failed)
    assert set(failed) == {"truncated", "garbage", "notjpeg"} and "good" in s, failed
    assert failed["truncated"].startswith("truncated"), failed  # PIL's reason, as under `pil`
    assert failed["garbage"].startswith(("undecodable", "truncated")), failed
    assert failed["notjpeg"].startswith("undecodable"), failed
    assert tuple(s["good"]["image_hw"]) == (480, 640) and len(s["good"]["boxes"]) > 0
