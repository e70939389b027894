"""The `openclip` family against open_clip itself, on the same weights and the same real photos.

Models are tiny random real architectures of each vision tower open_clip builds (its ViT, timm trunks with the
SigLIP 2 map head, EVA02 and PE-Core, a ConvNeXt, the ModifiedResNet), registered through open_clip's model-config
registry (timm trunks through timm's model registry) and saved as the hub file (open_clip_model.safetensors).
Each gets a pretrained tag carrying a real tag's preprocessing plus `file`: the path open_clip's own
`create_model_and_transforms(model, pretrained=tag)` takes when a tag is downloaded, here without a network.
"""
import json
import pickle

import numpy as np
import open_clip
import pytest
import timm
import torch
from helpers.tiny_models import register_tiny_openclip
from open_clip import pretrained as oc_pretrained
from PIL import Image
from safetensors.torch import save_file
from timm.models import register_model

from visfeat.extractors.openclip import build, check_names, resolve_preprocess
from visfeat.extractors.preset import Preset

PHOTOS = ["chelsea.png", "rocket.jpg", "coffee.png"]
CAPTIONS = ["A cat sitting on a sofa.", "two espresso cups", "a rocket on its launch pad at dusk"]
# the tiny timm trunks: real timm architectures, shrunk
_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}
TRUNKS = {
    "visfeat_tiny_siglip": ("vit_base_patch16_siglip_224", {**_VIT, "img_size": 64}),
    "visfeat_tiny_eva": ("eva02_large_patch14_clip_336", {**_VIT, "img_size": 84}),
    "visfeat_tiny_pe": ("vit_pe_core_large_patch14_336", {**_VIT, "img_size": 84}),
    "visfeat_tiny_convnext": ("convnext_base", {"depths": (1, 1, 1, 1), "dims": (16, 32, 48, 64)}),
}
for _name, (_arch, _kw) in TRUNKS.items():
    def _entry(pretrained=False, _arch=_arch, _kw=_kw, **kw):
        return timm.create_model(_arch, pretrained=False, **{**_kw, **kw})

    _entry.__name__ = _name
    if _name not in timm.list_models(_name):
        register_model(_entry)

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}  # CLIP BPE
# name -> (open_clip config, the real (model, tag) whose preprocessing and QuickGELU the tiny tag copies, layers)
MODELS = {
    "visfeat-tiny-vit": ({"embed_dim": 24, "vision_cfg": {"image_size": 64, "layers": 3, "width": 32,
                                                          "head_width": 16, "patch_size": 16}, "text_cfg": TEXT},
                         ("ViT-H-14-worldwide", "metaclip2_worldwide"), [0, -2]),
    "visfeat-tiny-clipa": ({"embed_dim": 24, "vision_cfg": {"image_size": 64, "layers": 2, "width": 32,
                                                            "head_width": 16, "patch_size": 16, "no_ln_pre": True,
                                                            "pool_type": "avg", "final_ln_after_pool": True},
                            "text_cfg": TEXT},
                           ("ViT-L-14-CLIPA", "datacomp1b"), [-1]),
    "visfeat-tiny-s2": ({"embed_dim": 64, "custom_text": True,
                         "vision_cfg": {"image_size": 64, "timm_model_name": "visfeat_tiny_siglip",
                                        "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
                         "text_cfg": {**TEXT, "width": 64, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP2"}},
                        ("ViT-B-16-SigLIP2", "webli"), [0]),
    "visfeat-tiny-eva": ({"embed_dim": 48, "custom_text": True,
                          "vision_cfg": {"image_size": 84, "timm_model_name": "visfeat_tiny_eva",
                                         "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": None},
                          "text_cfg": TEXT},
                         ("EVA02-L-14-336", "merged2b_s6b_b61k"), [-1, 0]),
    "visfeat-tiny-pe": ({"embed_dim": 64, "custom_text": True,
                         "vision_cfg": {"image_size": 84, "timm_model_name": "visfeat_tiny_pe",
                                        "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": None},
                         "text_cfg": {**TEXT, "context_length": 32}},
                        ("PE-Core-L-14-336", "meta"), [1]),
    "visfeat-tiny-convnext": ({"embed_dim": 24, "vision_cfg": {"image_size": 64, "timm_model_name":
                                                               "visfeat_tiny_convnext", "timm_model_pretrained": False,
                                                               "timm_pool": "", "timm_proj": "linear"},
                               "text_cfg": TEXT},
                              ("convnext_base_w", "laion2b_s13b_b82k"), [1, -1]),
    "visfeat-tiny-rn": ({"embed_dim": 24, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8,
                                                         "patch_size": None}, "text_cfg": TEXT},
                        ("RN50", "openai"), [2, 4]),
}
TAG = "tiny"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> weights file of each tiny model (random weights, all of them perturbed: no zero-init block is
    left an identity), with the tiny tag registered for it."""
    d = tmp_path_factory.mktemp("openclip")
    out = {}
    for name, (cfg, (real, real_tag), _) in MODELS.items():
        quick_gelu = bool(open_clip.get_pretrained_cfg(real, real_tag).get("quick_gelu"))
        out[name] = register_tiny_openclip(d, name, cfg, real, real_tag, TAG, quick_gelu)
    yield out
    for name in MODELS:
        oc_pretrained._PRETRAINED.pop(name, None)


def preset() -> Preset:
    """The preset as engineer C's catalog declares it (only what `build` reads)."""
    return Preset(name="openclip", env="clip", builder="visfeat.extractors.openclip:build", summary="", outputs=(),
                  source="", license="", citation="", text=True)


def extractor(name: str, path, layers=(), amp=False):
    opts = {"model": name, "pretrained": TAG, "layers": list(layers), "exif": True, "decode": "pil"}
    return build(preset(), str(path), "cpu", amp, opts)


def library(name: str):
    """open_clip's own model and eval transform for (name, tag): what a user of the library gets."""
    qg = bool(open_clip.get_pretrained_cfg(name, TAG).get("quick_gelu"))
    model, _, transform = open_clip.create_model_and_transforms(name, pretrained=TAG, force_quick_gelu=qg)
    return model.eval(), transform


def photos(sample_dir):
    return [Image.open(sample_dir / p).convert("RGB") for p in PHOTOS]


@pytest.mark.parametrize("name", list(MODELS))
def test_matches_library(name, tiny, sample_dir):
    layers = MODELS[name][2]
    ex = extractor(name, tiny[name], layers)
    model, transform = library(name)
    images = photos(sample_dir)
    batch = ex.collate([ex.preprocess(im) for im in images])
    x = torch.stack([transform(im) for im in images])
    assert torch.equal(batch["image"], x)  # the model input: the library's own transform of the tag
    outs = ex.forward(batch)
    got = {k: np.stack([o[k] for o in outs]) for k in outs[0]}
    specs = {f.name: f.shape for f in ex.fields()}
    assert set(got) == set(specs) and all(got[k].shape[1:] == specs[k] for k in got)

    v = model.visual
    n = len(v.transformer.resblocks) if hasattr(v, "transformer") else 5 if hasattr(v, "attnpool") else \
        len(v.trunk.feature_info)
    tokens = hasattr(v, "transformer") or hasattr(getattr(v, "trunk", None), "num_prefix_tokens")
    with torch.no_grad():
        glob = model.encode_image(x)
        normed = not getattr(v, "final_ln_after_pool", False)  # CLIPA norms the pooled vector only
        last = v.forward_intermediates(x, indices=[n - 1], normalize_intermediates=normed, intermediates_only=True,
                                       output_extra_tokens=tokens)  # conv trunks do not take the flag
        inter = v.forward_intermediates(x, indices=layers, intermediates_only=True)["image_intermediates"]
    np.testing.assert_array_equal(got["global"], glob.numpy())  # the same ops: equal, not close
    np.testing.assert_array_equal(got["grid"], last["image_intermediates"][0].permute(0, 2, 3, 1).numpy())
    prefix = last.get("image_intermediates_prefix")
    if prefix is not None and prefix[0].shape[1]:
        np.testing.assert_array_equal(got["prefix"], prefix[0].numpy())
    else:
        assert "prefix" not in got
    ordered = sorted(range(len(layers)), key=lambda k: layers[k] % n)  # the library returns them in block order
    for k, pos in zip(ordered, range(len(layers))):
        np.testing.assert_array_equal(got[f"layer{layers[k]}"], inter[pos].permute(0, 2, 3, 1).numpy())
    assert ex.config["preprocess"]["size"] == list(v.image_size if isinstance(v.image_size, tuple)
                                                   else (v.image_size,) * 2)


def test_what_each_tower_records(tiny):
    pooling = {"visfeat-tiny-vit": "cls token", "visfeat-tiny-clipa": "mean of patches",
               "visfeat-tiny-s2": "attention pool (map head)", "visfeat-tiny-eva": "cls token",
               "visfeat-tiny-pe": "attention pool (map head)",
               "visfeat-tiny-convnext": "avg pool of the feature map", "visfeat-tiny-rn": "attention pool"}
    # SigLIP has no CLS token; conv towers have no tokens
    prefix = {"visfeat-tiny-vit": 1, "visfeat-tiny-clipa": 1, "visfeat-tiny-eva": 1, "visfeat-tiny-pe": 1}
    for name, path in tiny.items():
        ex = extractor(name, path)
        assert ex.config["pooling"] == pooling[name], name
        fields = {f.name: f.shape for f in ex.fields()}
        assert fields.get("prefix", (0,))[0] == prefix.get(name, 0), name
        assert fields["global"] == (MODELS[name][0]["embed_dim"],)
        assert ex.channels_last == ("amp" if name in ("visfeat-tiny-convnext", "visfeat-tiny-rn") else "never")
        json.dumps(ex.config)  # written as the store's attribute


def test_preprocessing_from_the_tag():
    """Resolved from (model, tag) of the real architectures, nothing built: SigLIP 2 squashes to 224 with mean and
    std 0.5 where open_clip's defaults (a local file, open_clip #1068) are CLIP's shortest-side crop."""
    s2 = resolve_preprocess("ViT-B-16-SigLIP2", "webli", (224, 224))
    assert s2 == {"size": [224, 224], "mode": "RGB", "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                  "resize_mode": "squash", "fill_color": 0, "crop": "none"}
    eva = resolve_preprocess("EVA02-L-14-336", "merged2b_s6b_b61k", (336, 336))
    assert eva["resize_mode"] == "shortest" and eva["crop"] == "center"
    assert eva["mean"] == list(open_clip.OPENAI_DATASET_MEAN)
    assert resolve_preprocess("PE-Core-L-14-336", "meta", (336, 336))["interpolation"] == "bilinear"


def test_local_file_keeps_the_tags_preprocessing(tiny, sample_dir):
    """open_clip #1068: `create_model(model, pretrained=FILE)` gets the defaults (CLIP mean/std, shortest side);
    visfeat with that same file gets the tag's (SigLIP 2: 0.5, squash) and the tag's input."""
    name, path = "visfeat-tiny-s2", tiny["visfeat-tiny-s2"]
    trap = open_clip.create_model(name, pretrained=str(path)).visual.preprocess_cfg
    assert trap["resize_mode"] == "shortest" and tuple(trap["mean"]) == open_clip.OPENAI_DATASET_MEAN
    ex = extractor(name, path)
    assert ex.config["preprocess"]["resize_mode"] == "squash" and ex.config["preprocess"]["mean"] == [0.5] * 3
    image = photos(sample_dir)[1]  # rocket: not square, so squash and shortest-side crop differ
    assert torch.equal(ex.preprocess(image)["image"], library(name)[1](image))
    assert ex.preprocessor().needed_size(*image.size) == (64, 64)


@pytest.mark.parametrize("name", ["visfeat-tiny-s2", "visfeat-tiny-eva"])  # squash; shortest side + crop
def test_decode_modes_preprocess_alike(name, tiny, sample_dir):
    """`decode: gpu` runs the same steps on a uint8 tensor (torchvision's tensor resize: antialiased, so close to
    PIL's, not equal); `decode: draft` may decode at no less than `needed_size`. Workers get it pickled."""
    pre = pickle.loads(pickle.dumps(extractor(name, tiny[name]).preprocessor()))
    image = photos(sample_dir)[1]
    pil = pre(image)["image"]
    tensor = pre.tensor_preprocess()(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())["image"]
    assert tensor.shape == pil.shape and (tensor - pil).abs().mean() < 0.02
    w, h = pre.needed_size(*image.size)
    size = MODELS[name][0]["vision_cfg"]["image_size"]
    assert min(w, h) == size and (w == h) == (name == "visfeat-tiny-s2")


def test_quick_gelu_from_the_tag(tiny):
    """The tag says its weights were trained with QuickGELU and the architecture's config does not: the model
    gets QuickGELU (open_clip's create_model(model, pretrained=tag) only warns and keeps GELU)."""
    ex = extractor("visfeat-tiny-vit", tiny["visfeat-tiny-vit"])
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in ex.model.modules())
    with pytest.warns(UserWarning, match="QuickGELU mismatch"):
        plain = open_clip.create_model("visfeat-tiny-vit", pretrained=TAG)
    assert not any(isinstance(m, open_clip.transformer.QuickGELU) for m in plain.modules())


@pytest.mark.parametrize("name", ["visfeat-tiny-vit", "visfeat-tiny-eva", "visfeat-tiny-pe"])
def test_text_equals_encode_text(name, tiny, tmp_path):
    ex = extractor(name, tiny[name])
    model, _ = library(name)
    with torch.no_grad():
        ref = model.encode_text(open_clip.get_tokenizer(name)(CAPTIONS)).numpy()
    np.testing.assert_array_equal(ex.encode_text(CAPTIONS), ref)
    assert ex.encode_text([""]).shape == (1, MODELS[name][0]["embed_dim"])


def test_hf_tokenizer_offline_message(tiny, monkeypatch):
    """SigLIP 2's text needs its Hugging Face tokenizer: offline without the files, the error names the hub repo,
    the files and the folder to place them in."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub client reads HF_HUB_OFFLINE once, at import: without the constant it retries the network first
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ex = extractor("visfeat-tiny-s2", tiny["visfeat-tiny-s2"])
    with pytest.raises(RuntimeError) as e:
        ex.encode_text(CAPTIONS)
    msg = str(e.value)
    assert "timm/ViT-B-16-SigLIP2" in msg and "tokenizer.json" in msg and str(tiny["visfeat-tiny-s2"].parent) in msg


@pytest.mark.parametrize("name", ["visfeat-tiny-vit", "visfeat-tiny-eva"])  # open_clip's ViT runs sequence-first
def test_amp_bf16_close(name, tiny, sample_dir):
    fp32, bf16 = extractor(name, tiny[name], [0]), extractor(name, tiny[name], [0], amp=True)
    batch = fp32.collate([fp32.preprocess(im) for im in photos(sample_dir)])
    for a, b in zip(fp32.forward(batch), bf16.forward(batch)):
        for k in a:
            assert b[k].dtype == np.float32
            x, y = a[k].reshape(-1, a[k].shape[-1]), b[k].reshape(-1, b[k].shape[-1])
            cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
            assert cos.min() >= 0.99, (k, cos.min())
    x, y = fp32.encode_text(CAPTIONS), bf16.encode_text(CAPTIONS)
    assert ((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)).min() >= 0.99


def test_names_and_weights_checked(tiny, tmp_path):
    with pytest.raises(ValueError, match="ViT-B-16-SigLIP2"):
        check_names("ViT-B-16-SigLIP2x", "webli")
    with pytest.raises(ValueError, match="webli"):
        check_names("ViT-B-16-SigLIP2", "webly")
    other = tmp_path / "other.safetensors"  # the ViT's weights at another image size: refused, not resized
    from safetensors.torch import load_file

    sd = load_file(str(tiny["visfeat-tiny-vit"]))
    sd["visual.positional_embedding"] = sd["visual.positional_embedding"][:10]
    save_file(sd, str(other))
    with pytest.raises(ValueError, match="visual.positional_embedding"):
        extractor("visfeat-tiny-vit", other)
    with pytest.raises(ValueError, match="blocks"):
        extractor("visfeat-tiny-vit", tiny["visfeat-tiny-vit"], [3])


def test_registered_preset_end_to_end(tiny, sample_dir, tmp_path):
    """Through the catalog's `openclip` preset: a store with every field (layer names as given, negative too) and
    the resolved preprocessing and pooling in its config; `visfeat text` with the same extractor options."""
    import h5py

    import visfeat
    from visfeat.engine.items import folder_items
    from visfeat.engine.run import run_extraction
    from visfeat.engine.text import embed_captions

    name, path = "visfeat-tiny-eva", tiny["visfeat-tiny-eva"]
    opts = {"model": name, "pretrained": TAG, "layers": [-1, 0]}
    ex = visfeat.load_extractor("openclip", weights=str(path), device="cpu", **opts)
    run_extraction(ex, folder_items(sample_dir), tmp_path / "f.h5", batch_size=4, workers=0)
    store = visfeat.open(tmp_path / "f.h5")
    image_id = store.ids[0]
    row = store[image_id]
    assert {f.name for f in ex.fields()} <= set(row) and row["layer-1"].shape == (6, 6, 64)
    ref = ex.forward(ex.collate([ex.preprocess(Image.open(next(sample_dir.glob(f"{image_id}.*"))).convert("RGB"))]))
    np.testing.assert_allclose(row["global"], ref[0]["global"], rtol=1e-6, atol=1e-6)
    config = store.config
    assert config["preprocess"]["resize_mode"] == "shortest" and config["pooling"] == "cls token"

    (tmp_path / "caps.txt").write_text("chelsea\tA cat sitting on a sofa.\ncoffee\ttwo espresso cups\n")
    assert embed_captions("openclip", str(tmp_path / "caps.txt"), str(tmp_path / "t.h5"), weights=str(path),
                          options=opts) == 2
    from visfeat.cli import main

    assert main(["text", "--preset", "openclip", "--weights", str(path), "--captions", str(tmp_path / "caps.txt"),
                 "--out", str(tmp_path / "cli.h5"), "--device", "cpu", "--set", f"model={name}",
                 "--set", f"pretrained={TAG}"]) == 0
    for out in ("t.h5", "cli.h5"):
        with h5py.File(tmp_path / out) as f:
            np.testing.assert_allclose(f["text"][:], ex.encode_text(["A cat sitting on a sofa.", "two espresso cups"]),
                                       rtol=1e-6, atol=1e-6)
