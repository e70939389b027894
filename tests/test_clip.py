"""CLIP presets against openai/CLIP's own model code on the same tiny random weights (official file layouts).

The reference follows jianjieluo/OpenAI-CLIP-Feature: clip._transform (or Resize((448, 448)) for *_448), layer4
before attnpool / transformer tokens x[:, 1:] before ln_post, AvgPool2d(2, 2) where the preset pools, timm's
resize_pos_embed for *_448, global = encode_image (unnormalised).
"""
import numpy as np
import pytest
import torch
from PIL import Image
from helpers.tiny_models import original_clip_module
from torchvision import transforms as T

import visfeat

PHOTOS = ["chelsea.png", "rocket.jpg", "coffee.png", "camera.png"]
CASES = [  # preset, tiny model, grid pool, squash 448 (clip-rn101 runs clip-rn50's code path at the same size)
    ("clip-rn50", "rn", 1, False),
    ("clip-rn50x4", "rn288", 1, False),
    ("clip-vit-b32", "vit32", 1, False),
    ("clip-vit-b16", "vit16", 2, False),
    ("clip-vit-l14", "vit14", 2, False),
    ("clip-rn101-448", "rn", 2, True),
    ("clip-vit-b32-448", "vit32", 2, True),
]


def reference(kind_path, images, pool, squash):
    from timm.models.vision_transformer import resize_pos_embed

    m = original_clip_module()
    sd = torch.jit.load(str(kind_path), map_location="cpu").state_dict()
    model = m.build_model(sd).float().eval()
    v = model.visual
    size = 448 if squash else v.input_resolution
    if squash:  # OpenAI-CLIP-Feature visual_extractor/customized.py
        pe = v.attnpool.positional_embedding if hasattr(v, "attnpool") else v.positional_embedding
        new = resize_pos_embed(pe.data.unsqueeze(0), torch.zeros(1, (size // (448 // 14)) ** 2 + 1, pe.shape[1]))
        pe.data = new.squeeze(0)
    resize = T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC) if squash else \
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)
    tf = T.Compose([resize, T.CenterCrop(size), T.ToTensor(),
                    T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    x = torch.stack([tf(im) for im in images])
    grabbed = {}
    if hasattr(v, "attnpool"):
        h = v.layer4.register_forward_hook(lambda mod, i, o: grabbed.update(grid=o))
    else:
        h = v.transformer.register_forward_hook(lambda mod, i, o: grabbed.update(tokens=o))
    with torch.no_grad():
        glob = model.encode_image(x)
    h.remove()
    if "grid" in grabbed:
        grid = grabbed["grid"]
    else:
        t = grabbed["tokens"].permute(1, 0, 2)[:, 1:]
        s = int(t.shape[1] ** 0.5)
        grid = t.reshape(len(x), s, s, -1).permute(0, 3, 1, 2)
    if pool > 1:
        grid = torch.nn.AvgPool2d(kernel_size=(2, 2), stride=2)(grid)
    return glob.numpy(), grid.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("preset, kind, pool, squash", CASES)
def test_clip_matches_original(preset, kind, pool, squash, tiny_clip, sample_dir):
    images = [Image.open(sample_dir / p).convert("RGB") for p in PHOTOS]
    ts_path, sd_path = tiny_clip[kind]
    ref_g, ref_grid = reference(ts_path, images, pool, squash)
    for path in (ts_path, sd_path):  # TorchScript archive and plain state dict load the same
        ex = visfeat.load_extractor(preset, weights=str(path), device="cpu")
        outs = ex.forward(ex.collate([ex.preprocess(im) for im in images]))
        g = np.stack([o["global"] for o in outs])
        grid = np.stack([o["grid"] for o in outs])
        assert grid.shape == ref_grid.shape == (4, *ex.fields()[1].shape)
        assert ref_grid.shape[1:3] == {"clip-rn50x4": (9, 9), "clip-vit-l14": (8, 8)}.get(preset, (7, 7))
        np.testing.assert_allclose(g, ref_g, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(grid, ref_grid, rtol=1e-4, atol=1e-5)


def test_clip_global_not_normalised_and_text(tiny_clip, tmp_path):
    m = original_clip_module()
    ts_path, _ = tiny_clip["vit32"]
    ex = visfeat.load_extractor("clip-vit-b32", weights=str(ts_path), device="cpu")
    model = m.build_model(torch.jit.load(str(ts_path)).state_dict()).float().eval()
    import open_clip

    caps = ["A cat sitting on a sofa.", "two espresso cups"]
    cleaned = [c.lower().strip().strip(".") for c in caps]  # clip_textual_feats.py
    with torch.no_grad():
        ref = model.encode_text(open_clip.tokenize(cleaned)).numpy()
    np.testing.assert_allclose(ex.encode_text(caps), ref, rtol=1e-4, atol=1e-5)

    (tmp_path / "caps.txt").write_text("chelsea\tA cat sitting on a sofa.\nchelsea\tA tabby cat\ncoffee\ttwo espresso cups\n")
    import h5py

    from visfeat.engine.text import embed_captions

    assert embed_captions("clip-vit-b32", str(tmp_path / "caps.txt"), str(tmp_path / "t.h5"), weights=str(ts_path)) == 3
    with h5py.File(tmp_path / "t.h5") as f:
        assert list(f["caption_id"].asstr()[:]) == ["chelsea#0", "chelsea#1", "coffee#0"]
        assert list(f["image_id"].asstr()[:]) == ["chelsea", "chelsea", "coffee"]
        np.testing.assert_allclose(f["text"][[0, 2]], ref, rtol=1e-4, atol=1e-5)


def test_missing_weights_message_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        visfeat.load_extractor("clip-vit-b16")
    msg = str(e.value)
    assert "ViT-B-16.pt" in msg and "resources/weights/clip-vit-b16/ViT-B-16.pt" in msg


def test_not_a_clip_checkpoint(tmp_path):
    torch.save({"foo": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(KeyError, match="not an OpenAI CLIP checkpoint"):
        visfeat.load_extractor("clip-rn50", weights=str(tmp_path / "x.pt"))
