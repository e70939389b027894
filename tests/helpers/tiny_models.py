"""Tiny random-init models saved in the official checkpoint layouts, built with the original model code.

CLIP: openai/CLIP's own clip/model.py (from the PyPI package openai-clip, loaded by file path because its
package __init__ needs pkg_resources), weights converted to fp16 like the official files, saved either as a
TorchScript archive (the official format) or as a plain state dict.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import torch


def original_clip_module():
    path = importlib.metadata.distribution("openai-clip").locate_file("clip/model.py")
    spec = importlib.util.spec_from_file_location("openai_clip_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# (vision_layers, vision_width, patch) -> tiny but inferable by build_model: text width 64 (1 head), vocab 49408
TINY = {  # kind: (vision_layers, vision_width, patch, image_resolution)
    "rn": ((1, 1, 1, 1), 8, None, 224),
    "rn288": ((1, 1, 1, 1), 8, None, 288),  # RN50x4's input size
    "vit32": (1, 64, 32, 224),
    "vit16": (1, 64, 16, 224),
    "vit14": (1, 64, 14, 224),  # ViT-L/14's patch: a 16x16 grid
}


def tiny_clip_state_dict(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    m = original_clip_module()
    torch.manual_seed(seed)
    layers, width, patch, resolution = TINY[kind]
    model = m.CLIP(
        embed_dim=32, image_resolution=resolution, vision_layers=layers, vision_width=width, vision_patch_size=patch,
        context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1,
    )
    with torch.no_grad():  # random BN statistics so frozen batch norms are not identities
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    m.convert_weights(model)  # official files hold fp16 weights
    return {k: v.clone() for k, v in model.state_dict().items()}


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(sd: dict[str, torch.Tensor], path: str | Path) -> Path:
    """A TorchScript archive whose state_dict() has exactly these keys, like the official CLIP .pt files."""
    root = _Holder()
    for key, t in sd.items():
        *mods, leaf = key.split(".")
        node = root
        for name in mods:
            if name not in node._modules:
                node.add_module(name, _Holder())
            node = node._modules[name]
        node.register_buffer(leaf, t.clone())
    torch.jit.save(torch.jit.script(root), str(path))
    return Path(path)


def save_state_dict(sd: dict[str, torch.Tensor], path: str | Path) -> Path:
    torch.save(sd, str(path))
    return Path(path)


def register_tiny_openclip(folder: Path, name: str, cfg: dict, real: str, real_tag: str, tag: str,
                           quick_gelu: bool = False) -> Path:
    """A tiny open_clip model `name` from `cfg`, registered with open_clip (model config, and tag `tag` whose
    preprocessing is `real`/`real_tag`'s, pointing at the file), random weights all perturbed (no zero-init block
    left an identity), saved as `folder/name/open_clip_model.safetensors`; returns that path. Undo the tag with
    `oc_pretrained._PRETRAINED.pop(name)`."""
    import json

    import open_clip
    from open_clip import pretrained as oc_pretrained
    from safetensors.torch import save_file

    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(name, quick_gelu=quick_gelu)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = folder / name / "open_clip_model.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    oc_pretrained._PRETRAINED[name] = {tag: {**open_clip.get_pretrained_cfg(real, real_tag), "hf_hub": "",
                                             "file": str(path)}}
    return path
