"""The `timm` family (extractors/timm_encoder.py) against timm's own forward on the same weights and photo.

Each architecture of the timm-served named models is built random-init and shrunk (depth 2, width 64: the same
classes and code paths, at the tag's own input size), saved as a hub-layout `model.safetensors`, loaded through
the extractor, and compared with a second timm model that loaded the same state dict with `load_state_dict`:
- the model input equals timm's eval transform of the tag's pretrained cfg (bit for bit);
- `global` equals `forward_head(forward_features(x), pre_logits=True)`, `grid` the library's own reshaped patch
  tokens after the final norm (`forward_intermediates(norm=True)`'s last block; ConvNeXt: the last feature map),
  `prefix` the prefix tokens, `layer{i}` `forward_intermediates` (max abs diff 0: the same ops run in fp32).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
from helpers.photos import cosine
from PIL import Image
from safetensors.torch import save_file

from visfeat.extractors.timm_encoder import TimmEncoder, check_decode, load_model
from visfeat.extractors.weights import sha256_of
from visfeat.sources.images import load_image

SMALL = {"depth": 2, "embed_dim": 64, "num_heads": 2}
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# name -> (overrides that shrink it, pooling recorded, prefix tokens); the named presets' timm architectures
ARCHS = {
    "vit_base_patch14_reg4_dinov2.lvd142m": (SMALL, "cls token", 5),  # DINOv2 + registers, 518 px
    "vit_base_patch16_dinov3.lvd1689m": (SMALL, "mean of patches", 5),  # DINOv3 (timm averages; upstream: CLS)
    "convnext_tiny.dinov3_lvd1689m": ({"depths": (1, 1, 1, 1), "dims": (16, 32, 48, 64)},
                                      "mean of the last feature map", 0),
    "aimv2_large_patch14_224.apple_pt": (SMALL, "mean of patches", 0),
    "vit_pe_core_large_patch14_336.fb": (SMALL, "attention pool (map head)", 1),
    "eva02_large_patch14_clip_336.merged2b": (SMALL, "cls token", 1),
    "vit_so400m_patch16_siglip_384.v2_webli": (SMALL, "attention pool (map head)", 0),
    "naflexvit_so400m_patch16_radio_v4.c_radio": (SMALL, "cls token", 10),
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k": ({}, "cls token", 1),  # a real architecture, unshrunk
}
LAYERS = [-1, 0]  # out of block order on purpose: fields follow the option's order


def grey(t: torch.Tensor) -> torch.Tensor:
    """Model-input units of a std-0.5 tag in grey levels."""
    return t * 0.5 * 255


def random_weights(name: str, folder: Path, overrides: dict, seed: int = 0) -> tuple[Path, dict]:
    """A random-init model's state dict saved as the hub file (`model.safetensors`)."""
    torch.manual_seed(seed)
    sd = timm.create_model(name, pretrained=False, **overrides).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path, sd


def reference(name: str, sd: dict, overrides: dict) -> torch.nn.Module:
    """timm's own model on the same weights, loaded without the extractor's loader."""
    model = timm.create_model(name, pretrained=False, **overrides)
    model.load_state_dict(sd)
    return model.eval()


def encoder(name: str, path: Path, overrides: dict, layers=(), amp: bool = False, **options) -> TimmEncoder:
    opts = {"model": name, "layers": list(layers), "exif": True, "max_pixels": 178_956_970, "decode": "pil", **options}
    return TimmEncoder("timm", opts, sha256_of(path), "cpu", amp, load_model(name, str(path), **overrides))


@pytest.fixture(scope="module")
def chelsea(sample_dir) -> Image.Image:
    return load_image(sample_dir / "chelsea.png")


@pytest.fixture(scope="module")
def built(tmp_path_factory, chelsea):
    """name -> (extractor with LAYERS, reference model, the photo's model input)."""
    out = {}

    def get(name):
        if name not in out:
            overrides = ARCHS[name][0]
            path, sd = random_weights(name, tmp_path_factory.mktemp(name.replace(".", "_")), overrides)
            out[name] = encoder(name, path, overrides, LAYERS), reference(name, sd, overrides)
        return out[name]
    return get


@pytest.mark.parametrize("name", list(ARCHS))
def test_model_input_is_timms_eval_transform_of_the_tag(name, built, chelsea):
    ext, _ = built(name)
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(name).to_dict())
    ref = timm.data.create_transform(**cfg, is_training=False)(chelsea)
    ours = ext.preprocess(chelsea)["image"]
    assert ours.dtype == torch.float32 and torch.equal(ours, ref), name
    assert tuple(ours.shape[1:]) == tuple(ext.config["preprocess"]["size"]) == cfg["input_size"][1:]


@pytest.mark.parametrize("name", list(ARCHS))
def test_outputs_equal_timms_forward(name, built, chelsea):
    ext, ref = built(name)
    _, pooling, prefix = ARCHS[name]
    x = ext.preprocess(chelsea)["image"][None]
    out = ext.forward({"image": x})[0]
    with torch.no_grad():
        feats = ref.forward_features(x)
        glob = ref.forward_head(feats, pre_logits=True)
        inter = ref.forward_intermediates(x, indices=LAYERS, intermediates_only=True)  # in block order: 0, -1
        last = ref.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
    assert np.array_equal(out["global"], glob[0].numpy()), name
    if feats.ndim == 4:  # ConvNeXt: the last feature map
        assert np.array_equal(out["grid"], feats[0].permute(1, 2, 0).numpy()), name
        assert "prefix" not in out
    else:  # the library's own reshape of the last block's normed patch tokens
        assert np.array_equal(out["grid"], last[0].permute(1, 2, 0).numpy()), name
        assert ref.num_prefix_tokens == prefix
        if prefix:
            assert np.array_equal(out["prefix"], feats[0, :prefix].numpy()), name
        else:
            assert "prefix" not in out
    assert np.array_equal(out["layer-1"], inter[1][0].permute(1, 2, 0).numpy()), name
    assert np.array_equal(out["layer0"], inter[0][0].permute(1, 2, 0).numpy()), name
    assert [(f.name, f.shape, f.dtype) for f in ext.fields()] == [(k, v.shape, "float32") for k, v in out.items()]
    assert all(v.dtype == np.float32 for v in out.values())
    assert ext.config["pooling"] == pooling
    assert ext.channels_last == ("always" if feats.ndim == 4 else "never")


def test_batch_rows_equal_single_images(built, sample_dir):
    """A batch gives each image its own rows (the order kept), as one image at a time does."""
    ext, _ = built("vit_base_patch14_reg4_dinov2.lvd142m")
    pre = ext.preprocessor()
    imgs = [pre(load_image(sample_dir / n)) for n in ("chelsea.png", "coffee.png", "astronaut.png")]
    batch = ext.forward(ext.collate(imgs))
    for one, row in zip(imgs, batch):
        single = ext.forward(ext.collate([one]))[0]
        for k in row:
            np.testing.assert_allclose(row[k], single[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_preprocessing_is_the_tags_not_the_architectures_default(tmp_path):
    """The open_clip #1068 trap, timm's side: a local file of DINO weights on vit_small (whose default tag is
    augreg: mean/std 0.5) gets the DINO tag's ImageNet mean/std; DINOv2's tag: 518 px, bicubic, crop_pct 1."""
    over = SMALL
    path, _ = random_weights("vit_small_patch16_224.dino", tmp_path / "dino", over)
    pre = encoder("vit_small_patch16_224.dino", path, over).config["preprocess"]
    default = timm.get_pretrained_cfg("vit_small_patch16_224")
    assert list(default.mean) != IMAGENET[0]  # the trap is real: the default tag differs
    assert (pre["mean"], pre["std"]) == IMAGENET and pre["size"] == [224, 224] and pre["crop_pct"] == 0.9
    path, _ = random_weights("vit_base_patch14_dinov2.lvd142m", tmp_path / "dinov2", over)
    pre = encoder("vit_base_patch14_dinov2.lvd142m", path, over).config["preprocess"]
    assert pre == {"size": [518, 518], "resize_mode": "shortest", "interpolation": "bicubic", "crop": "center",
                   "crop_pct": 1.0, "mean": IMAGENET[0], "std": IMAGENET[1],
                   "from": f"timm {timm.__version__} pretrained_cfg of vit_base_patch14_dinov2.lvd142m"}


def test_state_dict_file_loads_as_the_safetensors_file(tmp_path, built, chelsea):
    """A torch state dict (here wrapped under 'state_dict', as training checkpoints are) is the same weights."""
    name = "vit_base_patch16_dinov3.lvd1689m"
    path, sd = random_weights(name, tmp_path, SMALL)
    torch.save({"state_dict": sd}, tmp_path / "pytorch_model.bin")
    a = encoder(name, path, SMALL)
    b = encoder(name, tmp_path / "pytorch_model.bin", SMALL)
    x = {"image": a.preprocess(chelsea)["image"][None]}
    ra, rb = a.forward(x)[0], b.forward(x)[0]
    assert all(np.array_equal(ra[k], rb[k]) for k in ra)


def test_weights_of_another_shape_or_missing_keys_are_refused(tmp_path):
    name = "vit_base_patch14_dinov2.lvd142m"
    # position embeddings for 224 px: timm's filter would resize them to 518's grid without a word
    path, _ = random_weights(name, tmp_path / "small", dict(SMALL, img_size=224))
    with pytest.raises(ValueError, match="pos_embed"):
        load_model(name, str(path), **SMALL)
    path, sd = random_weights(name, tmp_path / "cut", SMALL)
    save_file({k: v for k, v in sd.items() if not k.startswith("blocks.1.")}, str(path))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_model(name, str(path), **SMALL)


def test_layers_out_of_range_fail_at_build(tmp_path):
    name = "vit_base_patch16_dinov3.lvd1689m"
    path, _ = random_weights(name, tmp_path, SMALL)
    with pytest.raises(ValueError, match="out of range"):
        encoder(name, path, SMALL, layers=[2])
    ext = encoder(name, path, SMALL, layers=[-2])
    assert [f.name for f in ext.fields()] == ["global", "grid", "prefix", "layer-2"]


def test_amp_bf16_close_to_fp32(built, chelsea, tmp_path):
    """bf16 autocast on the CPU: float32 outputs, not fp32's bit for bit (autocast ran), close to them."""
    for name in ("vit_base_patch14_reg4_dinov2.lvd142m", "convnext_tiny.dinov3_lvd1689m"):
        ext, _ = built(name)
        overrides = ARCHS[name][0]
        path, _ = random_weights(name, tmp_path / name.replace(".", "_"), overrides)
        amp = encoder(name, path, overrides, LAYERS, amp=True)
        x = {"image": ext.preprocess(chelsea)["image"][None]}
        a, b = ext.forward(x)[0], amp.forward(x)[0]
        for k in a:
            assert b[k].dtype == np.float32 and not np.array_equal(a[k], b[k]), (name, k)
            c = cosine(a[k], b[k])
            print(f"{name} {k}: bf16 cosine min {c.min():.5f}, mean {c.mean():.5f}")
            assert c.min() >= 0.999 and c.mean() >= 0.9999, (name, k, c.min(), c.mean())


def test_preprocessor_picklable_and_decode_modes(built, sample_dir, tmp_path):
    """The preprocessor crosses to workers (pickle); `draft` decodes a 1280x960 JPEG at 1/2 (needed_size: the
    resize's output); `gpu`'s tensor steps give the PIL path's input within a grey level on average."""
    ext, _ = built("vit_tiny_patch16_224.augreg_in21k_ft_in1k")  # Resize 248 (224 / crop_pct 0.9) + crop 224
    pre = ext.preprocessor()
    img = load_image(sample_dir / "chelsea.png").resize((1280, 960), Image.BICUBIC)
    img.save(tmp_path / "big.jpg", quality=90)
    again = pickle.loads(pickle.dumps(pre))
    full = pre(load_image(tmp_path / "big.jpg"))["image"]
    assert torch.equal(again(load_image(tmp_path / "big.jpg"))["image"], full)
    assert pre.needed_size(1280, 960) == (330, 248)
    drafted = load_image(tmp_path / "big.jpg", needed=pre.needed_size)
    d = pre(drafted)["image"]
    assert drafted.size == (640, 480) and d.shape == full.shape == (3, 224, 224)
    print(f"draft path: mean |diff| {float(grey(d - full).abs().mean()):.3f} grey levels")
    assert float(grey(d - full).abs().mean()) <= 2.0
    u8 = torch.from_numpy(np.asarray(load_image(tmp_path / "big.jpg")).copy()).permute(2, 0, 1).contiguous()
    t = pre.tensor_preprocess()(u8)["image"]
    diff = grey(t - full).abs()
    print(f"gpu path: mean |diff| {float(diff.mean()):.3f}, max {float(diff.max()):.2f} grey levels")
    assert t.shape == full.shape and float(diff.mean()) <= 1.0


def test_build_through_the_registry(tmp_path, chelsea):
    """`load_extractor("timm", weights=FILE, model=..., layers=...)`: the preset's builder, its options merged."""
    import visfeat

    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    path, sd = random_weights(name, tmp_path, {})
    ext = visfeat.load_extractor("timm", weights=str(path), device="cpu", model=name, layers=[3])
    assert ext.weights_sha256 == sha256_of(path) and ext.preset == "timm"
    assert ext.config["model"] == name and ext.config["layers"] == [3] and ext.config["pooling"] == "cls token"
    assert [(f.name, f.shape) for f in ext.fields()] == [("global", (192,)), ("grid", (14, 14, 192)),
                                                         ("prefix", (1, 192)), ("layer3", (14, 14, 192))]
    out = ext.forward(ext.collate([ext.preprocess(chelsea)]))[0]
    ref = reference(name, sd, {})
    with torch.no_grad():
        glob = ref.forward_head(ref.forward_features(ext.preprocess(chelsea)["image"][None]), pre_logits=True)
    assert np.array_equal(out["global"], glob[0].numpy())


def test_build_finds_the_fetched_file_or_names_the_hub_file(tmp_path, monkeypatch):
    """Without `weights`: the file the fetch places under resources/weights/timm/ARCH/TAG/ is loaded; missing, the
    error names the hub repo, the file and where to put it (and nothing is downloaded)."""
    import visfeat
    from visfeat.extractors.weights import WeightsMissing

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    dest = Path("resources/weights/timm/vit_tiny_patch16_224/augreg_in21k_ft_in1k/model.safetensors")
    with pytest.raises(WeightsMissing) as e:
        visfeat.load_extractor("timm", device="cpu", model=name)
    assert f"timm/{name}" in str(e.value) and str(dest) in str(e.value), str(e.value)
    path, _ = random_weights(name, tmp_path / dest.parent, {})
    ext = visfeat.load_extractor("timm", device="cpu", model=name)
    assert ext.weights_sha256 == sha256_of(path)


def test_gpu_decode_refused_where_the_transform_pads():
    """timm's border mode pads with a per-channel fill the tensor path cannot apply: refused, the others pass."""
    def cfg(name):
        return timm.data.resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(name).to_dict())
    border = cfg("deepseek_vit_412m.deepseek_v4_1_flash")
    assert border["crop_mode"] == "border"
    with pytest.raises(ValueError, match="decode: gpu"):
        check_decode(border, "gpu")
    check_decode(border, "draft")
    check_decode(cfg("vit_base_patch14_dinov2.lvd142m"), "gpu")
