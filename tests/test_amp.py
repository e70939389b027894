"""`amp: true` (fp16 autocast on CUDA, bf16 on the CPU) against fp32, per preset family, on the tiny fixtures.

Bounds (docs/presets.md "Precision" has the measured figures): global / grid rows cosine >= 0.999 (detector
grids >= 0.99); detectors: features on the SAME boxes (forced-boxes mode, the fp32 run's boxes) cosine >= 0.99,
and at least 40% of the fp32 run's boxes selected again (IoU >= 0.9; measured 0.52-0.80): their random class
scores are nearly tied, so this bound is loose on purpose; the fractions measured are printed (`pytest -s`).

The detector fixtures are random ResNets, and random deep ResNets are chaotic: in fp32, multiplying the input by
(1 + 0.001 N(0, 1)) already moves the tiny X-152's res5 map to cosine 0.83, so any rounding looks large there.
Trained ResNets are not (their residual branches are small against the stream); `trained_like` scales each
residual branch of the detector fixtures by 0.3 (then that perturbation gives cosine 1.00000), in fp32 and
AMP alike, so the bounds measure AMP's rounding, not the fixtures' chaos.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.photos import iou, photo

import visfeat

FIX = Path(__file__).parent / "fixtures"
NAMES = ("chelsea.png", "rocket.jpg")
BUTD, VINVL = FIX / "butd" / "tiny_attr.pkl", FIX / "vinvl" / "tiny_vinvl.pth"
VMB, GRIDFEATS = FIX / "vmb" / "tiny_x152_fpn.pth", FIX / "gridfeats" / "tiny_x152.pth"
BRANCH_SCALE = 0.3  # see the module docstring


def trained_like(ex):
    """Scale every residual branch of a detection ResNet by BRANCH_SCALE (frozen BN weight and bias of conv3)."""
    from visfeat.detection.resnet import Bottleneck

    model = ex.model if hasattr(ex, "model") else ex.backbone
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, Bottleneck):
                block.conv3.norm.weight *= BRANCH_SCALE
                block.conv3.norm.bias *= BRANCH_SCALE
    return ex


def run(ex, given: dict | None = None) -> list[dict]:
    batch = ex.collate([ex.preprocess(photo(n)) for n in NAMES])
    batch["image_id"] = [Path(n).stem for n in NAMES]
    if given is not None:
        ex.set_given_boxes(given)
    return ex.forward(batch)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per row (last axis; (1, ...) arrays: the whole array), in float64; rows that are zero in fp32
    must stay (nearly) zero."""
    shape = (1, -1) if a.shape[0] == 1 else (-1, a.shape[-1])
    a, b = a.reshape(shape).astype(np.float64), b.reshape(shape).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    live = na > 1e-6 * max(na.max(), 1e-30)
    assert np.all(nb[~live] <= 1e-2 * max(na.max(), 1e-30)), "rows zero in fp32 are not zero under AMP"
    return (a[live] * b[live]).sum(1) / (na[live] * nb[live])


def check_fields(ex, outs: list[dict]) -> None:
    """Every output is a numpy array with the declared per-image shape and dtype (float32 under AMP too)."""
    for o in outs:
        assert set(o) == {f.name for f in ex.fields()}
        for f in ex.fields():
            assert o[f.name].dtype == np.dtype(f.dtype), (f.name, o[f.name].dtype)
            shape = o[f.name].shape[1:] if f.ragged else o[f.name].shape
            assert tuple(shape) == tuple(f.shape), (f.name, shape, f.shape)


def test_amp_is_bf16_on_cpu_fp16_on_cuda():
    ex = visfeat.load_extractor("effnet-lite0", device="cpu", amp=True)
    assert ex.amp and ex.amp_dtype == torch.bfloat16
    ex.device = torch.device("cuda")
    assert ex.amp_dtype == torch.float16
    assert not visfeat.load_extractor("effnet-lite0", device="cpu").amp


@pytest.fixture(scope="module")
def vissl_rn50(tmp_path_factory) -> str:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    with torch.no_grad():  # trained-like residual branches, as `trained_like` does for the detectors
        for block in model.modules():
            if isinstance(block, torchvision.models.resnet.Bottleneck):
                block.bn3.weight *= BRANCH_SCALE
    path = tmp_path_factory.mktemp("vissl") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def weights_of(family: str, tiny_clip, vissl_rn50) -> str | None:
    return {"effnet": None, "clip-vit": str(tiny_clip["vit32"][0]), "clip-rn": str(tiny_clip["rn"][0]),
            "vissl": vissl_rn50, "gridfeats": str(GRIDFEATS), "grid8": str(VMB)}[family]


GRID_CASES = [  # family, preset, least cosine of any row of any float field
    ("effnet", "effnet-lite0", 0.98),  # real ImageNet weights: grid cells >= 0.98, global / logits >= 0.998
    ("clip-vit", "clip-vit-b32", 0.999),
    ("clip-rn", "clip-rn50", 0.999),
    ("vissl", "vissl-rn50-layers", 0.999),
    ("vissl", "vissl-rn50-trunk", 0.999),
    ("gridfeats", "gridfeats-x152", 0.99),
    ("grid8", "grid8-x152", 0.99),
]


@pytest.mark.parametrize("family, preset, bound", GRID_CASES, ids=[c[1] for c in GRID_CASES])
def test_global_and_grid_agree_with_fp32(family, preset, bound, tiny_clip, vissl_rn50):
    w = weights_of(family, tiny_clip, vissl_rn50)
    f32, amp = (visfeat.load_extractor(preset, weights=w, device="cpu", amp=a) for a in (False, True))
    if family in ("gridfeats", "grid8"):
        f32, amp = trained_like(f32), trained_like(amp)
    a, b = run(f32), run(amp)
    check_fields(amp, b)
    # grids: per cell; other fields (global, logits, VISSL's layers): each image's whole vector
    worst = {k: min(float((row_cosine(x[k], y[k]) if k == "grid" else row_cosine(x[k][None], y[k][None])).min())
                    for x, y in zip(a, b))
             for k in a[0] if a[0][k].dtype == np.float32 and a[0][k].ndim}
    print(f"\n{preset} AMP vs fp32, least row cosine: {worst}")
    assert min(worst.values()) >= bound, worst


def test_clip_text_agrees_with_fp32(tiny_clip):
    w = str(tiny_clip["vit32"][0])
    caps = ["A cat sleeping on a red sofa.", "a rocket on its launch pad"]
    a, b = (visfeat.load_extractor("clip-vit-b32", weights=w, device="cpu", amp=x).encode_text(caps)
            for x in (False, True))
    assert b.dtype == np.float32
    assert row_cosine(a, b).min() >= 0.999


DETECTORS = [("butd-r101-36", BUTD), ("butd-r101-10-100", BUTD), ("vinvl-x152c4", VINVL), ("vmb-x152", VMB)]


@pytest.mark.parametrize("preset, weights", DETECTORS, ids=[d[0] for d in DETECTORS])
def test_detector_features_on_the_same_boxes_and_selections(preset, weights):
    f32, amp = (trained_like(visfeat.load_extractor(preset, weights=str(weights), device="cpu", amp=a))
                for a in (False, True))
    a, b = run(f32), run(amp)
    check_fields(amp, b)
    still = [float((iou(x["boxes"], y["boxes"]).max(1) >= 0.9).mean()) for x, y in zip(a, b)]
    given = {Path(n).stem: x["boxes"] for n, x in zip(NAMES, a)}
    fa, fb = run(f32, given), run(amp, given)
    check_fields(amp, fb)
    cos = min(float(row_cosine(x["features"], y["features"]).min()) for x, y in zip(fa, fb))
    print(f"\n{preset} AMP vs fp32: features on the same boxes least cosine {cos:.5f}; "
          f"fraction of fp32 boxes selected again (IoU >= 0.9) {np.round(still, 2)}")
    assert cos >= 0.99
    assert min(still) >= 0.4


FORMAT_CASES = [  # family, preset, weights, channels_last in fp32, under AMP (base.Extractor.channels_last)
    ("effnet", "effnet-lite0", None, True, True),
    ("clip-vit", "clip-vit-b32", None, False, False),  # one conv (the patches): nothing to gain
    ("clip-rn", "clip-rn50", None, True, True),
    ("vissl", "vissl-rn50-trunk", None, True, True),
    ("gridfeats", "gridfeats-x152", None, False, True),  # fp32 keeps detectron2's float operations bit for bit
    ("grid8", "grid8-x152", None, False, True),
    ("butd", "butd-r101-36", BUTD, False, True),
    ("vinvl", "vinvl-x152c4", VINVL, False, True),
    ("vmb", "vmb-x152", VMB, False, True),
]


@pytest.mark.parametrize("family, preset, weights, fp32_cl, amp_cl", FORMAT_CASES, ids=[c[1] for c in FORMAT_CASES])
def test_memory_format_per_family_and_precision(family, preset, weights, fp32_cl, amp_cl, tiny_clip, vissl_rn50):
    w = str(weights) if weights else weights_of(family, tiny_clip, vissl_rn50)
    for amp, expect in ((False, fp32_cl), (True, amp_cl)):
        ex = visfeat.load_extractor(preset, weights=w, device="cpu", amp=amp)
        fmt = torch.channels_last if expect else torch.contiguous_format
        assert ex.memory_format == fmt
        convs = [c.weight for m in vars(ex).values() if isinstance(m, torch.nn.Module)
                 for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size != (1, 1)]
        assert convs and all(c.is_contiguous(memory_format=fmt) for c in convs)
        assert ex.on_device(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("kind, preset", [("vit32", "clip-vit-b32"), ("rn", "clip-rn50")])
def test_clip_amp_runs_sequence_first_with_the_same_outputs(kind, preset, tiny_clip):
    """Under AMP the transformers run sequence-first (clip.sequence_first: faster, same operations)."""
    amp = visfeat.load_extractor(preset, weights=str(tiny_clip[kind][0]), device="cpu", amp=True)
    assert not amp.model.transformer.batch_first and not amp.model.transformer.resblocks[0].attn.batch_first
    batch_first = visfeat.load_extractor(preset, weights=str(tiny_clip[kind][0]), device="cpu", amp=True)
    for t in [batch_first.model.transformer] + ([batch_first.model.visual.transformer] if kind == "vit32" else []):
        t.batch_first = True
        for block in t.resblocks:
            block.attn.batch_first = True
    for x, y in zip(run(amp), run(batch_first), strict=True):
        for k in x:
            np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=1e-6)
    captions = ["a cat on a sofa", "a rocket"]
    np.testing.assert_allclose(amp.encode_text(captions), batch_first.encode_text(captions), rtol=1e-5, atol=1e-6)
    assert visfeat.load_extractor(preset, weights=str(tiny_clip[kind][0]), device="cpu").model.transformer.batch_first
