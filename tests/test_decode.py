"""Decode modes (preset option `decode`): `pil` is today's path, `draft` decodes JPEGs at a smaller DCT scale,
`gpu` decodes them in batches on the model's device (here the CPU: the same code on CPU tensors).

Real photos (scikit-image's) saved as quality-90 JPEGs, run through `run_extraction` under both modes with the
tiny random models of the parity tests (effnet-lite0: its real weights). Bounds (docs/presets.md "Decode modes"):
global and grid cosine for the classifiers; for detectors the model input itself (the tiny random detectors
amplify any pixel change, see test_detector_inputs_draft_within_bound), and the geometry end to end.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.photos import cosine, iou, photo
from PIL import Image

import visfeat
from visfeat.engine.items import folder_items
from visfeat.engine.run import run_extraction
from visfeat.extractors.registry import resolve_options
from visfeat.sources.images import full_size, header_size, load_image

FIX = Path(__file__).parent / "fixtures"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
# family: (preset, weights, options); detectors get 1600x1200 JPEGs, large enough for a 1/2 draft at 600/1000
FAMILIES = {
    "butd": ("butd-r101-36", FIX / "butd" / "tiny_attr.pkl", {}),
    "vinvl": ("vinvl-x152c4", FIX / "vinvl" / "tiny_vinvl.pth", {}),
    "vmb": ("vmb-x152", FIX / "vmb" / "tiny_x152_fpn.pth", {"size": "600/1000"}),
    "grid8": ("grid8-x152", FIX / "vmb" / "tiny_x152_fpn.pth", {"size": "600/1000"}),
    "gridfeats": ("gridfeats-x152", FIX / "gridfeats" / "tiny_x152.pth", {}),
}
# documented bounds of `draft` against `pil` (docs/presets.md)
MIN_COS_CLASSIFIER = 0.99  # global and every grid cell, tiny random models
MIN_COS_GPU = 0.999  # decode: gpu on CPU tensors, global
MIN_COS_GPU_GRID = 0.98  # and every grid cell (effnet's cells move with <= 1 grey level of resize rounding)
MAX_GREY_DIFF = 1.0  # detectors: mean |draft - pil| of the model input, in grey levels (0-255)
MIN_COS_INPUT = 0.999  # detectors: cosine of the (mean-subtracted) model inputs


def jpegs(d: Path, size: tuple[int, int]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for n in PHOTOS:
        photo(n).resize(size, Image.BICUBIC).save(d / f"{Path(n).stem}.jpg", quality=90)
    return d


@pytest.fixture(scope="module")
def vga(tmp_path_factory) -> Path:
    return jpegs(tmp_path_factory.mktemp("vga"), (640, 480))


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    return jpegs(tmp_path_factory.mktemp("large"), (1600, 1200))


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    from helpers.tiny_models import save_state_dict, tiny_clip_state_dict

    return str(save_state_dict(tiny_clip_state_dict("vit32"), tmp_path_factory.mktemp("clip") / "vit32.pt"))


def extract(preset: str, weights, folder: Path, out: Path, given=None, workers: int = 0, **options):
    ex = visfeat.load_extractor(preset, weights=None if weights is None else str(weights), device="cpu", **options)
    if given is not None:
        ex.set_given_boxes(given)
    run_extraction(ex, folder_items(folder), out, batch_size=2, workers=workers)
    return visfeat.open(out)


def both(preset, weights, folder, tmp_path, **options):
    return (extract(preset, weights, folder, tmp_path / "pil.h5", **options),
            extract(preset, weights, folder, tmp_path / "draft.h5", decode="draft", **options))


def test_draft_decodes_jpegs_at_the_dct_scale_the_resize_needs(vga, large):
    def clip_224(w, h):  # shorter side to 224
        return (round(224 * w / h), 224) if w >= h else (224, round(224 * h / w))

    im = load_image(vga / "chelsea.jpg", needed=clip_224)
    assert im.size == (320, 240) and full_size(im) == (640, 480)  # 1/2: 1/4 (160x120) is below 298x224
    assert load_image(large / "chelsea.jpg", needed=clip_224).size == (400, 300)  # 1/4
    same = load_image(vga / "chelsea.jpg", needed=lambda w, h: (w // 2 + 1, h // 2 + 1))  # 1/2 is too small
    assert same.size == full_size(same) == (640, 480)
    assert np.array_equal(np.asarray(same), np.asarray(load_image(vga / "chelsea.jpg")))


def test_draft_applies_exif_orientation_after_the_scale(tmp_path):
    """A stored 480x640 JPEG with orientation 6 (rotate 90 CW) is 640x480 as seen: the draft asks for the
    stored image's sides swapped, and the result is the rotated image at half scale."""
    src = photo("chelsea.png").resize((640, 480), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    src.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rot.jpg", quality=90, exif=exif)
    asked = []

    def needed(w, h):
        asked.append((w, h))
        return 298, 224

    im = load_image(tmp_path / "rot.jpg", needed=needed)
    assert asked == [(640, 480)] and header_size(tmp_path / "rot.jpg") == (640, 480)
    assert im.size == (320, 240) and full_size(im) == (640, 480)
    diff = np.abs(np.asarray(im, np.float32) - np.asarray(src.resize((320, 240), Image.BOX), np.float32))
    assert diff.mean() < 6, diff.mean()  # the same picture, upright


def test_pil_is_the_default_and_unchanged(vga, tmp_path):
    """`decode: pil` (the default) gives exactly what preprocessing `load_image` gives; `draft` on images no
    smaller scale can serve (effnet needs 256 px of 480: 1/2 is 240) gives the very same store contents."""
    ex = visfeat.load_extractor("effnet-lite0", device="cpu")
    assert ex.config["decode"] == "pil"
    pil, draft = both("effnet-lite0", None, vga, tmp_path)
    for i in pil:
        x = ex.preprocess(load_image(vga / f"{i}.jpg"))["image"][None]
        with torch.no_grad():
            logits = ex.model(x)[0].numpy()
        np.testing.assert_allclose(pil[i]["logits"], logits, rtol=1e-4, atol=1e-4)
        for k, v in pil[i].items():
            assert np.array_equal(v, draft[i][k]), (i, k)


def test_unknown_decode_mode_names_the_allowed_ones():
    with pytest.raises(ValueError, match="decode 'nvjpeg' unknown; decode modes: pil, draft, gpu"):
        visfeat.load_extractor("effnet-lite0", device="cpu", decode="nvjpeg")
    for name in visfeat.presets():  # every preset takes every mode (tests/test_decode_detectors.py: detectors)
        assert resolve_options(name, {"decode": "gpu"})["decode"] == "gpu"


def test_decode_in_the_config_reaches_the_command_line():
    from conftest import REPO

    from visfeat.workflow.args import WorkflowArgs
    from visfeat.workflow.config import ConfigError, validate_config

    schema = str(REPO / "workflow/schemas/config.schema.yaml")

    def cfg(decode):
        return {"datasets": {"s": {"source": "sample"}}, "extractors": {"effnet-lite0": {"decode": decode}},
                "features": [{"datasets": ["s"], "extractors": ["effnet-lite0"]}]}

    c = validate_config(cfg("draft"), schema)
    line = WorkflowArgs(c, {"datasets": {}, "archives": {}}).extract("effnet-lite0", [], [])
    assert line.endswith("""--set 'decode="draft"'""")
    with pytest.raises(ConfigError, match="extractors.effnet-lite0: decode 'GPU' unknown; decode modes: pil, dr"):
        validate_config(cfg("GPU"), schema)


def classifier_cosines(pil, draft) -> tuple[float, float]:
    g = min(float(cosine(pil[i]["global"][None], draft[i]["global"][None])[0]) for i in pil)
    c = min(float(cosine(pil[i]["grid"], draft[i]["grid"]).min()) for i in pil)
    return g, c


@pytest.mark.parametrize("family", ["effnet", "clip", "vissl"])
def test_classifiers_draft_within_bound(family, vga, large, tiny_vit, tmp_path):
    if family == "effnet":  # 1280x960: 1/2 serves the 256-px resize
        folder = jpegs(tmp_path / "img", (1280, 960))
        pil, draft = both("effnet-lite0", None, folder, tmp_path)
    elif family == "clip":
        pil, draft = both("clip-vit-b32", tiny_vit, vga, tmp_path)
    else:  # VISSL's preprocessing on a small timm trunk (random weights): what matters here is the input
        torch.manual_seed(0)
        import timm

        path = tmp_path / "r18.pth"
        torch.save(timm.create_model("resnet18").state_dict(), path)
        folder = jpegs(tmp_path / "img", (1280, 960))
        pil, draft = both("vissl-rn50-trunk", path, folder, tmp_path, backbone="timm:resnet18")
    for i in pil:
        assert tuple(pil[i]["image_hw"]) == tuple(draft[i]["image_hw"])  # the full image's size, not the draft's
    if family == "vissl":
        g = min(float(cosine(pil[i][k].reshape(1, -1), draft[i][k].reshape(1, -1))[0])
                for i in pil for k in pil[i] if k != "image_hw")
        c = g
    else:
        g, c = classifier_cosines(pil, draft)
    print(f"{family}: global cosine {g:.5f}, grid cell cosine {c:.5f}")
    assert g >= MIN_COS_CLASSIFIER and c >= MIN_COS_CLASSIFIER, (g, c)


def boxes_found(ours: dict, ref: dict, min_iou: float = 0.9) -> float:
    """Fraction of ref's boxes that ours has too: same label, IoU >= min_iou (greedy, one to one)."""
    if len(ref["boxes"]) == 0:
        return 1.0
    m = iou(ref["boxes"], ours["boxes"]) if len(ours["boxes"]) else np.zeros((len(ref["boxes"]), 0))
    used: set[int] = set()
    for i in range(len(ref["boxes"])):
        for j in np.argsort(-m[i], kind="stable") if m.shape[1] else []:
            if j not in used and m[i, j] >= min_iou and ours["obj_id"][j] == ref["obj_id"][i]:
                used.add(j)
                break
    return len(used) / len(ref["boxes"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_detector_inputs_draft_within_bound(family, large):
    """The detectors' input under `draft` (1/2 decode, then the preset's resize from there) against `pil`'s, per
    preprocessing style: same size and the full image's size, pixels within MAX_GREY_DIFF on average. The bound
    is on the input: the tiny random detectors amplify any pixel change (+-0.5 grey of uniform noise alone takes
    gridfeats' cell cosine to 0.92), so their outputs say nothing about a trained model's agreement."""
    preset, weights, options = FAMILIES[family]
    if not weights.exists():
        pytest.skip("parity fixture not generated")
    pre = visfeat.load_extractor(preset, weights=str(weights), device="cpu", **options).preprocessor()
    for n in PHOTOS[:2]:
        path = large / f"{Path(n).stem}.jpg"
        a, b = pre(load_image(path)), pre(load_image(path, needed=pre.needed_size))
        w, h = pre.needed_size(1600, 1200)  # 800x600 (grid8 floors to 32: 800x576), the 1/2 decode's size or less
        assert a["image"].shape == b["image"].shape and tuple(a["image"].shape[1:]) == (h, w), family
        assert torch.equal(a["orig_hw"], b["orig_hw"]) if "orig_hw" in a else True
        for k in ("input_hw", "scale"):
            if k in a:
                assert torch.equal(a[k], b[k]), (family, k)
        x, y = a["image"].double(), b["image"].double()
        diff = float((x - y).abs().mean())
        cos = float((x * y).sum() / (x.norm() * y.norm()))
        print(f"{family} {n}: mean |diff| {diff:.3f} grey levels, input cosine {cos:.6f}")
        assert diff <= MAX_GREY_DIFF and cos >= MIN_COS_INPUT, (family, n, diff, cos)


def test_detector_draft_end_to_end_keeps_the_full_image_geometry(large, tmp_path):
    """Through run_extraction: `image_hw` is the full image's, boxes come out in its pixels (pil's boxes given
    under `draft` come back as they went in), and selected boxes span the full image, not the 1/2 draft."""
    preset, weights, options = FAMILIES["butd"]
    if not weights.exists():
        pytest.skip("parity fixture not generated")
    folder = tmp_path / "img"
    folder.mkdir()
    for n in PHOTOS[:2]:
        (folder / f"{Path(n).stem}.jpg").write_bytes((large / f"{Path(n).stem}.jpg").read_bytes())
    pil, draft = both(preset, weights, folder, tmp_path)
    given = {i: pil[i]["boxes"] for i in pil}
    forced = extract(preset, weights, folder, tmp_path / "forced.h5", given=given, decode="draft")
    for i in pil:
        assert tuple(pil[i]["image_hw"]) == tuple(draft[i]["image_hw"]) == tuple(forced[i]["image_hw"]) == (1200, 1600)
        np.testing.assert_allclose(forced[i]["boxes"], pil[i]["boxes"], atol=1e-3)
        for s in (pil, draft):
            assert s[i]["boxes"][:, 2].max() > 800 and s[i]["boxes"][:, 3].max() > 600  # full-image pixels
            assert s[i]["boxes"][:, 2].max() <= 1600 and s[i]["boxes"][:, 3].max() <= 1200
        found = boxes_found(draft[i], pil[i])
        cos = float(cosine(forced[i]["features"], pil[i]["features"]).mean())
        print(f"butd {i} (tiny random weights): boxes found {found:.2f}, mean feature cosine on pil's boxes {cos:.4f}")


def damaged_jpegs(tmp_path: Path, size: tuple[int, int]) -> Path:
    """A folder with one good JPEG of `size`, the same file cut in half, and one with garbage after its header."""
    data = (jpegs(tmp_path / "src", size) / "chelsea.jpg").read_bytes()
    d = tmp_path / "img"
    d.mkdir()
    (d / "good.jpg").write_bytes(data)
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "garbage.jpg").write_bytes(data[:200] + bytes(range(256)) * 8)
    return d


def test_corrupt_jpeg_under_draft_is_a_recorded_failure(tmp_path):
    """1280x960: effnet's draft decodes these at 1/2, so the scaled decoder is the one that meets the damage."""
    d = damaged_jpegs(tmp_path, (1280, 960))
    s = extract("effnet-lite0", None, d, tmp_path / "e.h5", workers=2, decode="draft")  # through worker processes
    failed = dict(s.failed)
    assert set(failed) == {"truncated", "garbage"} and "good" in s
    assert failed["truncated"].startswith("truncated"), failed
    assert failed["garbage"].startswith(("undecodable", "truncated")), failed


def rotated_and_png(folder: Path) -> Path:
    """Beside the JPEGs: a PNG (decoded by PIL in the worker) and a JPEG stored sideways with EXIF orientation 6."""
    src = photo("coffee.png").resize((640, 480), Image.BICUBIC)
    src.save(folder / "coffee_png.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    src.transpose(Image.Transpose.ROTATE_90).save(folder / "coffee_rot.jpg", quality=90, exif=exif)
    return folder


@pytest.mark.parametrize("family", ["effnet", "clip"])
def test_gpu_decode_on_cpu_tensors_within_bound(family, tiny_vit, tmp_path):
    """`decode: gpu` with the device on the CPU: JPEGs decoded in one batched decode_jpeg call, resize/crop/
    normalise as tensor ops; PNGs and EXIF orientation on the way; against `pil`."""
    folder = rotated_and_png(jpegs(tmp_path / "img", (640, 480)))
    preset, weights = ("effnet-lite0", None) if family == "effnet" else ("clip-vit-b32", tiny_vit)
    pil = extract(preset, weights, folder, tmp_path / "pil.h5")
    gpu = extract(preset, weights, folder, tmp_path / "gpu.h5", decode="gpu")
    assert set(pil) == set(gpu) and len(pil) == len(PHOTOS) + 2
    for i in pil:
        assert tuple(pil[i]["image_hw"]) == tuple(gpu[i]["image_hw"]) == (480, 640)
    g, c = classifier_cosines(pil, gpu)
    print(f"{family} gpu (on CPU tensors): global cosine {g:.5f}, grid cell cosine {c:.5f}")
    assert g >= MIN_COS_GPU and c >= MIN_COS_GPU_GRID, (g, c)


def test_corrupt_jpeg_under_gpu_is_a_recorded_failure(tmp_path):
    d = damaged_jpegs(tmp_path, (640, 480))
    (d / "notjpeg.jpg").write_bytes(b"not an image at all")
    Image.open(d / "good.jpg").convert("CMYK").save(d / "cmyk.jpg", quality=90)  # PIL decodes what torch may not
    s = extract("effnet-lite0", None, d, tmp_path / "e.h5", workers=2, decode="gpu")  # bytes through workers
    failed = dict(s.failed)
    assert set(failed) == {"truncated", "garbage", "notjpeg"} and "good" in s and "cmyk" in s, failed
    assert failed["truncated"].startswith("truncated"), failed  # PIL's reason, as under `pil`
    assert failed["garbage"].startswith(("undecodable", "truncated")), failed
    assert failed["notjpeg"].startswith("undecodable"), failed
