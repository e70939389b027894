"""`resize` for the VMB and grid8 presets: "numpy" (default) is OpenCV's plain resize path bitwise, "opencv" calls
cv2.resize itself, so with the OpenCV build an original run used (IPP on or off) the input pixels are the same.

References: tests/fixtures/vmb_opencv/ (MMF extract_features_vmb.py and X-LXMERT's grid8 script on the VMB
fixture's tiny weights, run with opencv-python-headless 5.0.0.93 with IPP on and with IPP off; see its NOTE.md).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.photos import assert_same_regions, cosine, iou, photo, top_boxes
from PIL import Image

import visfeat
from visfeat.detection.preprocess import CaffeFloatPreprocessor

FIX = Path(__file__).parent / "fixtures"
WEIGHTS = FIX / "vmb" / "tiny_x152_fpn.pth"
REF = FIX / "vmb_opencv"
PHOTOS = ("astronaut.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "coffee.png")
MEAN = (102.9801, 115.9465, 122.7717)  # extract_features_vmb.py _image_transform


def load(name: str) -> dict:
    with np.load(REF / name) as z:
        return {k: z[k] for k in z.files}


def md5(t: torch.Tensor) -> str:
    """The fixture's input_md5: float32 (3, H, W) bytes (gen/run_reference.py tensor_md5)."""
    return hashlib.md5(np.ascontiguousarray(t.numpy(), dtype=np.float32).tobytes()).hexdigest()


def run(ex, names) -> list[dict]:
    batch = ex.collate([ex.preprocess(photo(n)) for n in names])
    batch["image_id"] = [Path(n).stem for n in names]
    return ex.forward(batch)


@pytest.fixture
def cv2_ipp(request):
    """cv2 with IPP set as the reference was made (param "ipp" / "plain"); restored afterwards. Skips (recorded)
    when this OpenCV is not the build the references were made with: the IPP pixels are that build's."""
    cv2 = pytest.importorskip("cv2")
    build = json.loads((REF / "opencv_build.json").read_text())
    if (cv2.__version__, cv2.ipp.getIppVersion()) != (build["cv2"], build["ipp"]):
        pytest.skip(f"OpenCV {cv2.__version__} / {cv2.ipp.getIppVersion()}; the references: {build}")
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(request.param == "ipp")
    assert cv2.ipp.useIPP() == (request.param == "ipp")
    yield request.param
    cv2.ipp.setUseIPP(before)


@pytest.mark.parametrize("mode, group", [("scale", "debug"), ("floor32", "grid8")])
def test_numpy_resize_gives_the_originals_plain_input_bitwise(mode, group):
    """No OpenCV needed: the default resize reproduces the inputs of the IPP-off runs (md5 of the float image)."""
    ref = load("reference_plain.npz")
    pre = CaffeFloatPreprocessor(800, 1333, MEAN, mode=mode)
    for n in PHOTOS:
        assert md5(pre(photo(n))["image"]) == str(ref[f"{Path(n).stem}/{group}/input_md5"]), n


def test_numpy_resize_equals_opencv_plain_path_on_random_sizes():
    cv2 = pytest.importorskip("cv2")
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    rng = np.random.default_rng(0)
    try:
        for _ in range(12):
            h, w = (int(v) for v in rng.integers(3, 700, 2))
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for mode in ("scale", "floor32"):
                ours = CaffeFloatPreprocessor(800, 1333, MEAN, mode=mode)
                theirs = CaffeFloatPreprocessor(800, 1333, MEAN, mode=mode, resize="opencv")
                a, b = ours(Image.fromarray(image))["image"], theirs(Image.fromarray(image))["image"]
                assert torch.equal(a, b), f"{mode} {h}x{w}: max |diff| {float((a - b).abs().max())}"
    finally:
        cv2.ipp.setUseIPP(before)


@pytest.mark.parametrize("cv2_ipp", ["ipp", "plain"], indirect=True)
def test_opencv_resize_gives_the_originals_input_bitwise(cv2_ipp):
    """The input of each run, and IPP does change the pixels (else this test could not tell the two apart)."""
    ref, other = load(f"reference_{cv2_ipp}.npz"), load("reference_plain.npz" if cv2_ipp == "ipp" else
                                                          "reference_ipp.npz")
    for mode, group in (("scale", "debug"), ("floor32", "grid8")):
        pre = CaffeFloatPreprocessor(800, 1333, MEAN, mode=mode, resize="opencv")
        for n in PHOTOS:
            key = f"{Path(n).stem}/{group}/input_md5"
            assert str(ref[key]) != str(other[key]), key
            assert md5(pre(photo(n))["image"]) == str(ref[key]), f"{cv2_ipp} {key}"


@pytest.mark.parametrize("cv2_ipp", ["ipp", "plain"], indirect=True)
def test_vmb_resize_opencv_equals_mmf_with_the_same_opencv(cv2_ipp):
    ref = load(f"reference_{cv2_ipp}.npz")
    ex = visfeat.load_extractor("vmb-x152", weights=str(WEIGHTS), device="cpu", resize="opencv")
    for n in PHOTOS:
        (o,) = run(ex, [n])
        r = {k.split("/")[-1]: v for k, v in ref.items() if k.startswith(f"{Path(n).stem}/vmb/")}
        k = int(r["num_boxes"])
        assert int(o["num_boxes"]) == k, n
        top = top_boxes(o, k)
        top["cls_prob"] = top["cls_prob"][:, 1:]  # MMF drops the background column
        match = assert_same_regions(top, {"boxes": r["bbox"][:k], "obj_id": r["objects"][:k],
                                          "features": r["features"][:k], "cls_prob": r["cls_prob"][:k]},
                                    f"{cv2_ipp} {n}")
        assert iou(r["bbox"][:k], top["boxes"][match]).diagonal().min() >= 0.9999, n
        assert cosine(top["features"][match], r["features"][:k]).min() >= 0.99999, n


@pytest.mark.parametrize("cv2_ipp", ["ipp", "plain"], indirect=True)
def test_grid8_resize_opencv_equals_xlxmert_with_the_same_opencv(cv2_ipp):
    ref = load(f"reference_{cv2_ipp}.npz")
    ex = visfeat.load_extractor("grid8-x152", weights=str(WEIGHTS), device="cpu", resize="opencv")
    for n, o in zip(PHOTOS, run(ex, list(PHOTOS))):
        want = ref[f"{Path(n).stem}/grid8/features"]
        assert cosine(o["grid"], want).min() >= 0.999999, n
        assert np.abs(o["grid"] - want).max() <= 1e-4 * np.abs(want).max(), n


@pytest.mark.parametrize("preset", ["vmb-x152", "grid8-x152"])
def test_resize_opencv_without_opencv_names_the_package(monkeypatch, preset):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError, as when it is not installed
    ex = visfeat.load_extractor(preset, weights=str(WEIGHTS), device="cpu", resize="opencv")
    with pytest.raises(ImportError, match=r"pip install opencv-python-headless==\d"):
        ex.preprocessor()


def test_resize_unknown_value_names_the_modes():
    ex = visfeat.load_extractor("vmb-x152", weights=str(WEIGHTS), device="cpu", resize="pil")
    with pytest.raises(ValueError, match="resize modes: numpy, opencv"):
        ex.preprocessor()
